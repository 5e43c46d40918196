"""Stage 1, the paper's Eq. 1: V_k*(A_k) = argmin_V L(V, A_k, D_tr)."""

from __future__ import annotations

from .base import SGLStage, accuracy


class VStage(SGLStage):
    role = "v"

    def __init__(self, learner, v_net, architecture, **kwargs):
        super().__init__(learner, v_net, **kwargs)
        self.architecture = architecture

    def get_batch(self):
        return self.batches.get("train")

    def training_step(self, batch):
        x, y = batch
        logits = self.network()(x, self.architecture_weights(self.architecture))
        loss = self.sgl.labeled_loss(logits, y)
        self.record(train_loss=loss, train_acc=accuracy(logits, y))
        return loss + self.weight_penalty()
