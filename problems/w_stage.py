"""Stage 2, the paper's Eq. 2:
W_k* = argmin_W L(W, A_k, D_tr) + lam * sum_{j != k} L(W, A_k, D_j^pl(D_u, V_j*(A_j)))."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import SGLStage, accuracy, detach_tree


@dataclass
class Peer:
    """Learner j as seen by learner k's W stage: the pseudo-labeller f(.; A_j, V_j)."""

    learner: int
    v_net: nn.Module
    architecture: nn.Module


class WStage(SGLStage):
    role = "w"

    def __init__(self, learner, w_net, architecture, peers: list[Peer], **kwargs):
        super().__init__(learner, w_net, **kwargs)
        self.architecture = architecture
        self.peers = peers

    def get_batch(self):
        if not self.peers:
            return self.batches.get("train"), None
        return self.batches.get("train"), self.batches.get("unlabeled")

    def pseudo_labels(self, peer: Peer, x_u: torch.Tensor) -> torch.Tensor:
        # W's own descent needs no gradient into V_j or A_j, so no graph is built there;
        # hypergradient solvers re-evaluate this loss with the graph.
        differentiable = not (self.descending or self.sgl.detach_pseudo_labels)

        def label():
            with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
                arch = peer.architecture()
                if not self.sgl.pseudo_label_arch_grad:
                    arch = detach_tree(arch)
                return self.sgl.pseudo_target(peer.v_net(x_u, arch))

        if differentiable:
            return label()
        # Constant pseudo-labels are the same for every W stage of this step: made once per peer.
        return self.batches.memo(("pseudo_labels", peer.learner), lambda: label().detach())

    def training_step(self, batch):
        (x, y), x_u = batch
        arch = self.architecture()
        logits = self.network()(x, arch)
        labeled = self.sgl.labeled_loss(logits, y)
        loss = labeled + self.weight_penalty()
        if self.peers:
            logits_u = self.network()(x_u, arch)
            pseudo = sum(
                self.sgl.pseudo_loss(logits_u, self.pseudo_labels(peer, x_u)) for peer in self.peers
            )
            loss = loss + self.sgl.lam * pseudo
            self.record(pseudo_loss=pseudo)
        self.record(train_loss=labeled, train_acc=accuracy(logits, y))
        return loss
