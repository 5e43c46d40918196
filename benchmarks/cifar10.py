"""SGL architecture search on CIFAR-10 (the paper's Table 3): CIFAR-100 images are the unlabeled data.

python benchmarks/cifar10.py [preset=...] [key=value ...]
"""

import sys

from recipe import main

if __name__ == "__main__":
    sys.exit(main("cifar10"))
