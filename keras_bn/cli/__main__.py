"""`python -m keras_bn.cli`: the `keras-bn` command line."""

import sys

from keras_bn.cli.command import main

sys.exit(main())
