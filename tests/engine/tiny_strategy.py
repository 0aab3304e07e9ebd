"""A real, tiny weakseg plugin for the engine tests: a two-phase strategy.

``TinyStrategy`` is a 3-layer CNN that learns foreground from point labels (a Gaussian blob per
point; masks when the batch has them) and predicts instances by thresholding and connected
components. It is registered in-process with the ``plugin_registration`` fixture, and for
subprocess runs (``python -m weakseg run``, torchrun) through a real entry point: the tests write a
``*.dist-info`` folder naming this module into a directory on ``PYTHONPATH``.

Fault injection for the tests (environment variables, read in ``forward``):

- ``WEAKSEG_TINY_SIGTERM_AT=k``: the process sends itself SIGTERM during step k;
- ``WEAKSEG_TINY_NAN_AT=k``: the loss of step k is NaN;
- ``WEAKSEG_TINY_LOG=path``: append one JSON line per step to ``path``: rank, step, image ids, bce;
- ``WEAKSEG_TINY_DUMP=folder``: every ``state_dict()`` call (the engine makes one on every rank per
  checkpoint) also saves the weights to ``folder/rank<R>-step<N>.pt``.
"""

from __future__ import annotations

import json
import os
import signal

import attrs
import numpy as np

from weakseg.hookspecs import hookimpl

STRATEGY = "tiny_test"


@attrs.frozen(kw_only=True)
class TinyStrategyConfig:
    """A 3-layer CNN learning foreground from points (engine tests)."""

    width: int = 8
    warmup_steps: int = 2
    sigma: float = 2.0
    #: False: a training-free strategy (the engine only evaluates it).
    trainable: bool = True

    def build(self, recipe, data):
        return make_strategy(self, data)


def make_strategy(cfg: TinyStrategyConfig, data):
    import torch
    from torch import nn

    from weakseg.components import Phase
    from weakseg.nn.instances import Instances
    from weakseg.strategy import StrategyModule

    class TinyPrincipal:
        def __init__(self, net: nn.Module) -> None:
            self.net = net

        @torch.no_grad()
        def predict(self, image: torch.Tensor) -> list:
            from scipy import ndimage

            prob = torch.sigmoid(self.net(image.float()))[:, 0].cpu().numpy()
            out = []
            for p in prob:
                labels, n = ndimage.label(p > 0.5)
                scores, locs, masks, origins = [], [], [], []
                for i, sl in enumerate(ndimage.find_objects(labels), start=1):
                    if sl is None:
                        continue
                    y0, x0 = sl[0].start, sl[1].start
                    size = max(sl[0].stop - y0, sl[1].stop - x0)
                    crop = np.zeros((size, size), np.float32)
                    region = labels[y0 : y0 + size, x0 : x0 + size] == i
                    crop[: region.shape[0], : region.shape[1]] = region
                    masks.append(crop)
                    scores.append(float(p[labels == i].mean()))
                    locs.append(ndimage.center_of_mass(labels == i))
                    origins.append((y0, x0))
                if not masks:
                    out.append(Instances.empty(p.shape))
                    continue
                s = max(m.shape[0] for m in masks)
                padded = np.zeros((len(masks), s, s), np.float32)
                for j, m in enumerate(masks):
                    padded[j, : m.shape[0], : m.shape[1]] = m
                out.append(
                    Instances(
                        scores=torch.tensor(scores),
                        locations=torch.tensor(np.asarray(locs, np.float32)),
                        masks=torch.from_numpy(padded),
                        origins=torch.tensor(origins, dtype=torch.long),
                        image_shape=tuple(p.shape),
                    )
                )
            return out

    class TinyStrategy(StrategyModule):
        def __init__(self) -> None:
            super().__init__()
            w = cfg.width
            self.net = nn.Sequential(
                nn.Conv2d(data.in_channels, w, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(w, 1, 3, padding=1),
            )
            self.register_buffer("seen_steps", torch.zeros((), dtype=torch.long))
            self.trainable = cfg.trainable

        def phases(self):
            return [Phase("warmup", 0), Phase("main", cfg.warmup_steps)]

        def parameter_groups(self):
            return {"head": self.net[4]}

        def _target(self, batch, shape):
            b, _, h, w = shape
            yy = torch.arange(h, dtype=torch.float32).view(h, 1) + 0.5
            xx = torch.arange(w, dtype=torch.float32).view(1, w) + 0.5
            targets = []
            for i in range(b):
                mask = batch.masks[i] if batch.masks else None
                if mask is not None:
                    targets.append((mask > 0).float().cpu())
                    continue
                t = torch.zeros(h, w)
                for y, x in batch.points[i].cpu().tolist():
                    t = torch.maximum(t, torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * cfg.sigma**2)))
                targets.append(t)
            return torch.stack(targets)[:, None].to(batch.image.device)

        def forward(self, batch, step):
            logits = self.net(batch.image)
            target = self._target(batch, logits.shape)
            losses = {"bce": nn.functional.binary_cross_entropy_with_logits(logits.float(), target)}
            if self.phase_at(step) == "main":
                losses["l2"] = 1e-4 * sum((p.float() ** 2).sum() for p in self.net.parameters())
            if os.environ.get("WEAKSEG_TINY_NAN_AT") == str(step):
                losses["bce"] = losses["bce"] * float("nan")
            self.seen_steps += 1
            self._faults(batch, step, losses)
            return losses

        def _faults(self, batch, step, losses):
            log = os.environ.get("WEAKSEG_TINY_LOG")
            if log:
                record = {
                    "rank": int(os.environ.get("RANK", "0")),
                    "step": step,
                    "ids": list(batch.image_ids),
                    "bce": float(losses["bce"].detach()),
                }
                with open(log, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            if os.environ.get("WEAKSEG_TINY_SIGTERM_AT") == str(step):
                os.kill(os.getpid(), signal.SIGTERM)

        def state_dict(self, *args, **kwargs):
            state = super().state_dict(*args, **kwargs)
            dump = os.environ.get("WEAKSEG_TINY_DUMP")
            if dump and not args and not kwargs:
                rank = os.environ.get("RANK", "0")
                torch.save(
                    {k: v.detach().clone() for k, v in state.items()},
                    f"{dump}/rank{rank}-step{int(self.seen_steps)}.pt",
                )
            return state

        def principal(self):
            return TinyPrincipal(self.net)

        def panel(self, image):
            with torch.no_grad():
                return {"foreground": torch.sigmoid(self.net(image.float()))[0, 0].cpu().numpy()}

    return TinyStrategy()


@hookimpl
def weakseg_register_strategies(registry):
    registry.add(STRATEGY, TinyStrategyConfig)
