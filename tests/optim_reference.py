"""Straightforward per-tensor reference maths used by the optimizer tests.

Written independently of soap/: plain loops, the first moment kept in the *original* basis
and projected every step (the older reference formulation, mathematically identical).
"""

import math

import torch


def adam_ref(params_grads, state, lr, betas, eps, wd, step):
    """Adam with the SOAP reference eps convention: denom sqrt(v)+eps, step size
    lr*sqrt(bc2)/bc1, decay after the update."""
    b1, b2 = betas
    for i, (p, g) in enumerate(params_grads):
        st = state.setdefault(i, {"m": torch.zeros_like(p), "v": torch.zeros_like(p)})
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).add_(g * g, alpha=1 - b2)
        ss = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
        p.add_(st["m"] / (st["v"].sqrt() + eps), alpha=-ss)
        p.add_(p, alpha=-lr * wd)


class RefSOAP:
    """Reference SOAP for matrices (both sides preconditioned) and vectors (Adam)."""

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), eps=1e-8, wd=0.01, freq=10):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.wd, self.freq = lr, betas, eps, wd, freq
        self.state = {}

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            g = p.grad.float()
            st = self.state.get(i)
            if st is None:
                st = self.state[i] = {"step": 0, "m": torch.zeros_like(g), "v": torch.zeros_like(g)}
                if g.dim() == 2:
                    st["L"] = torch.zeros(g.shape[0], g.shape[0])
                    st["R"] = torch.zeros(g.shape[1], g.shape[1])
                    st["L"].lerp_(g @ g.T, 1 - b2)
                    st["R"].lerp_(g.T @ g, 1 - b2)
                    st["QL"] = torch.linalg.eigh(st["L"] + 1e-30 * torch.eye(g.shape[0]))[1].flip(1)
                    st["QR"] = torch.linalg.eigh(st["R"] + 1e-30 * torch.eye(g.shape[1]))[1].flip(1)
                continue
            st["step"] += 1
            t = st["step"]
            mat = g.dim() == 2
            gp = st["QL"].T @ g @ st["QR"] if mat else g
            st["m"].mul_(b1).add_(g, alpha=1 - b1)  # original basis
            st["v"].mul_(b2).add_(gp * gp, alpha=1 - b2)
            mp = st["QL"].T @ st["m"] @ st["QR"] if mat else st["m"]
            u = mp / (st["v"].sqrt() + self.eps)
            u = st["QL"] @ u @ st["QR"].T if mat else u
            ss = self.lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            p.add_(u, alpha=-ss)
            p.add_(p, alpha=-self.lr * self.wd)
            if mat:
                st["L"].lerp_(g @ g.T, 1 - b2)
                st["R"].lerp_(g.T @ g, 1 - b2)
                if t % self.freq == 0:
                    for side, dim in (("L", 0), ("R", 1)):
                        q = st["Q" + side]
                        est = torch.diag(q.T @ st[side] @ q)
                        order = torch.argsort(est, descending=True)
                        st["v"] = st["v"].index_select(dim, order)
                        st["Q" + side] = torch.linalg.qr(st[side] @ q[:, order])[0]
