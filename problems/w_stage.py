"""Stage 2, the paper's Eq. 2:
W_k* = argmin_W L(W, A_k, D_tr) + lam * sum_{j != k} L(W, A_k, D_j^pl(D_u, V_j*(A_j)))."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sgl_betty.runtime import RandomState, float32_arithmetic

from .base import SGLStage, accuracy, detach_tree


@dataclass
class Peer:
    """Learner j as seen by learner k's W stage: the pseudo-labeller f(.; A_j, V_j)."""

    learner: int
    v_net: nn.Module
    architecture: nn.Module

    def pseudo_labels(self, x_u: torch.Tensor, sgl) -> torch.Tensor:
        """Learner j's pseudo-labels of x_u; their graph reaches A_j only with
        ``pseudo_label_arch_grad``."""
        arch = self.architecture()
        if not sgl.pseudo_label_arch_grad:
            arch = detach_tree(arch)
        return sgl.pseudo_target(self.v_net(x_u, arch))


@dataclass
class ConstantLabels:
    """A peer's pseudo-labels without a graph, and the random state they were drawn in (dropout
    masks), so that their graph can be rebuilt around exactly these values."""

    values: torch.Tensor
    drawn_in: RandomState


class WStage(SGLStage):
    role = "w"

    def __init__(self, learner, w_net, architecture, peers: list[Peer], **kwargs):
        super().__init__(learner, w_net, **kwargs)
        self.architecture = architecture
        self.peers = peers
        # Set by the hypergradient sweep: the peers' pseudo-labels as given tensors (leaves the
        # solvers differentiate towards), by learner.
        self._given_labels: dict[int, torch.Tensor] | None = None

    def get_batch(self):
        if not self.peers:
            return self.batches.get("train"), None
        return self.batches.get("train"), self.batches.get("unlabeled")

    def constant_pseudo_labels(self, peer: Peer) -> ConstantLabels:
        """The peer's pseudo-labels of this step's D_u batch without a graph: computed once per
        step (and per arithmetic: the descent's bf16 labels are not the solvers' float32 ones)
        and shared by every W stage."""
        x_u = self.batches.get("unlabeled")

        def label() -> ConstantLabels:
            drawn_in = RandomState(x_u.device)
            with torch.no_grad():
                return ConstantLabels(peer.pseudo_labels(x_u, self.sgl), drawn_in)

        key = ("pseudo_labels", peer.learner, float32_arithmetic(x_u.device.type))
        return self.batches.memo(key, label)

    def pseudo_label_graph(self, peer: Peer) -> torch.Tensor:
        """The peer's pseudo-labels with their graph, equal to ``constant_pseudo_labels``
        (the same arithmetic and random draws)."""
        constant = self.constant_pseudo_labels(peer)
        with constant.drawn_in.replayed():
            return peer.pseudo_labels(self.batches.get("unlabeled"), self.sgl)

    @contextmanager
    def given_pseudo_labels(self, labels: dict[int, torch.Tensor]):
        """Evaluate this stage's loss with these pseudo-labels (by learner) inside."""
        self._given_labels = labels
        try:
            yield
        finally:
            self._given_labels = None

    def pseudo_labels(self, peer: Peer, x_u: torch.Tensor) -> torch.Tensor:
        if self._given_labels is not None:
            return self._given_labels[peer.learner]
        # W's own descent needs no gradient into V_j or A_j, so no graph is built there;
        # Betty's path-by-path solvers re-evaluate this loss with the graph.
        if self.descending or self.sgl.detach_pseudo_labels or not torch.is_grad_enabled():
            return self.constant_pseudo_labels(peer).values
        return peer.pseudo_labels(x_u, self.sgl)

    def training_step(self, batch):
        (x, y), x_u = batch
        arch = self.architecture_weights(self.architecture)
        loss = self.labelled_term(x, y, arch)
        if self.peers:
            if self.descending:
                loss = self.backward_now(loss)
            loss = loss + self.sgl.lam * self.unlabelled_term(x_u, arch)
        return loss

    def labelled_term(self, x, y, arch):
        """L(W, A_k, D_tr) (and the L2 penalty where it is in the loss)."""
        logits = self.network()(x, arch)
        labeled = self.sgl.labeled_loss(logits, y)
        self.record(train_loss=labeled, train_acc=accuracy(logits, y))
        return labeled + self.weight_penalty()

    def unlabelled_term(self, x_u, arch):
        """sum_{j != k} L(W, A_k, D_j^pl): the loss on the peers' pseudo-labels of D_u."""
        logits_u = self.network()(x_u, arch)
        pseudo = sum(
            self.sgl.pseudo_loss(logits_u, self.pseudo_labels(peer, x_u)) for peer in self.peers
        )
        self.record(pseudo_loss=pseudo)
        return pseudo

    def loss_terms(self, batch) -> list:
        if not (self.peers and self.sgl.hypergrad.one_graph_at_a_time):
            return super().loss_terms(batch)
        (x, y), x_u = batch
        return [
            lambda: self.labelled_term(x, y, self.architecture_weights(self.architecture)),
            lambda: (
                self.sgl.lam
                * self.unlabelled_term(x_u, self.architecture_weights(self.architecture))
            ),
        ]

    def backward_now(self, loss: torch.Tensor) -> torch.Tensor:
        """The descent's gradient of the labelled part, taken before the unlabelled forward so that
        the two graphs are never alive together; returns its value without a graph. The
        gradients add up in ``.grad`` to exactly those of the summed loss (one contribution per
        parameter from each part, added once either way)."""
        device_type = torch.device(self.device).type
        with torch.autocast(device_type=device_type, enabled=False):  # backward as Betty takes it
            torch.autograd.backward(loss / self.gas, inputs=self.trainable_parameters())
        return loss.detach()
