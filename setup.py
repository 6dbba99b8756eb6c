"""Package discovery (the metadata is in pyproject.toml).

Every package under keras_bn/ is found, not listed (a hand-kept list once left
keras_bn.fold out of the wheel). The exporters live in the repository's top-level
`export/` folder, as the project's layout asks, and install as `keras_bn.export`:
pyproject's `packages.find` cannot rename a folder, so that mapping is made here.
"""

from setuptools import find_packages, setup

EXPORT = "keras_bn.export"
packages = find_packages(include=["keras_bn", "keras_bn.*"])
packages += [EXPORT] + [f"{EXPORT}.{p}" for p in find_packages("export")]
setup(packages=packages, package_dir={EXPORT: "export"})
