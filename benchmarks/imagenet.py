"""Evaluating a cell on ImageNet (the paper's Section 3.2, DARTS's train_imagenet.py).

    python benchmarks/imagenet.py eval.genotype=DARTS_V2 eval.imagenet.root=data/imagenet
    python benchmarks/imagenet.py eval.genotype=runs/x:1          # a cell searched on CIFAR-10
    torchrun --nproc_per_node 8 benchmarks/imagenet.py eval.genotype=DARTS_V2 eval.batch_size=1024 eval.lr=0.5

14 cells, C=48, 250 epochs, batch 128 (over all processes), SGD lr 0.1 decayed by 0.97 every
epoch, momentum 0.9, weight decay 3e-5, label smoothing 0.1, auxiliary weight 0.4, gradient
clip 5, no drop path; ``<root>/train`` and ``<root>/val`` are ImageFolders.
"""

import sys

from recipe import main

if __name__ == "__main__":
    sys.exit(main("imagenet"))
