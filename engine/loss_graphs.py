"""Second-order products of a loss given as a sum of terms, holding one term's graph at a time.

An implicit solver (Neumann, CG) needs, around the lower problem's weights w, Hessian-vector
products H u = d/dw (grad_w L . u) and the closing mixed product d/dy (grad_w L . p). Both are
linear in L, so over L = sum_i L_i they are sums over the terms. With one term (the default)
this is Betty's computation: one create-graph backward, kept for every product. With several
(a W stage's labelled and unlabelled terms, ``HypergradConfig.one_graph_at_a_time``) only one
term's double graph is alive: each product starts with the term whose graph is alive and
rebuilds the others in turn, replaying the random draws (dropout) of their first build.
"""

from __future__ import annotations

import warnings

import torch

from sgl_betty.runtime import RandomState
from sgl_betty.search_space.second_order_conv import second_order_pass


class LossGraphs:
    def __init__(self, terms, params, device):
        self.terms = list(terms)
        self.params = list(params)
        self.device = device
        self.drawn_in: dict[int, RandomState] = {}
        self.alive: tuple[int, list] | None = None  # (term, its create-graph gradient)

    def _gradient(self, index: int) -> list:
        if self.alive is not None and self.alive[0] == index:
            return self.alive[1]
        self.alive = None  # the previous term's graph goes before the next one is built
        with second_order_pass():
            if index in self.drawn_in:
                with self.drawn_in[index].replayed():
                    loss = self.terms[index]()
            else:
                self.drawn_in[index] = RandomState(self.device)
                loss = self.terms[index]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # parameters a term does not use
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.alive = (index, list(grads))
        return self.alive[1]

    def _in_turn(self):
        """The terms, the one whose graph is alive first."""
        order = list(range(len(self.terms)))
        if self.alive is not None:
            order.remove(self.alive[0])
            order.insert(0, self.alive[0])
        return order

    def _product(self, vector, inputs, keep: bool) -> list:
        total = None
        for index in self._in_turn():
            used = [(g, v) for g, v in zip(self._gradient(index), vector) if g is not None]
            used = [(g, v) for g, v in used if g.requires_grad]
            if not used:
                continue
            found = torch.autograd.grad(
                [g for g, _ in used],
                inputs,
                grad_outputs=[v for _, v in used],
                retain_graph=keep or len(self.terms) > 1,
                allow_unused=True,
            )
            del used  # before the next term's graph is built
            found = [torch.zeros_like(x) if f is None else f for f, x in zip(found, inputs)]
            total = found if total is None else [a + b for a, b in zip(total, found)]
        return total if total is not None else [torch.zeros_like(x) for x in inputs]

    def hvp(self, vector) -> list:
        """H u, with H the Hessian of the summed loss in the weights."""
        return self._product(vector, self.params, keep=True)

    def mixed(self, vector, targets) -> list:
        """(d^2 L / d targets d w) p; the graphs are freed afterwards."""
        product = self._product(vector, list(targets), keep=False)
        self.alive = None
        return product
