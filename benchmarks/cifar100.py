"""SGL architecture search on CIFAR-100 (the paper's Table 2).

python benchmarks/cifar100.py                      # the paper's search (GPU, real CIFAR)
python benchmarks/cifar100.py preset=smoke         # embedded synthetic data, a few CPU minutes
python benchmarks/cifar100.py preset=smoke hypergrad.type=neumann learners=3 lam=0.5 run.dir=runs/x
"""

import sys

from recipe import main

if __name__ == "__main__":
    sys.exit(main("cifar100"))
