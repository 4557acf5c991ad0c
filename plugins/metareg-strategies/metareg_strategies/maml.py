"""MAML (Finn, Abbeel and Levine, 2017), with Meta-SGD's learnable inner rates (Li et al., 2017).

The shared machinery (head, options, Meta-SGD rates, the batched inner loop) lives in
:class:`GradientAdaptation`; MAML adapts backbone and head, ANIL (``anil.py``) only the head.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg_strategies.batchnorm import sample_mask, use_batch_statistics
from metareg_strategies.inner_loop import adapted_query_logits, as_full, autocast_dtype, full_precision
from metareg_strategies.option_checks import flag, one_of, positive

HeadInit = Literal["learned", "zero"]
InnerPrecision = Literal["auto", "float32"]


def _key(name: str) -> str:
    # ParameterDict keys may not contain dots.
    return name.replace(".", "__")


class GradientAdaptation(metareg.Strategy):
    """Base for strategies that fine-tune a linear head (and maybe the body) per episode."""

    needs_grad_at_eval: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        adaptation_steps: int,
        adaptation_lr: float,
        first_order: bool,
        test_adaptation_steps: int | None,
        learn_lr: bool,
        head_init: str,
    ):
        super().__init__()
        for option, value in (("adaptation_steps", adaptation_steps), ("test_adaptation_steps", test_adaptation_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise metareg.OptionError(
                    f"{self.name}: {option} must be a positive integer, got {value!r}; one step is the usual choice"
                )
        positive(self.name, "adaptation_lr", adaptation_lr)
        one_of(self.name, "head_init", head_init, HeadInit)
        flag(self.name, "first_order", first_order)
        flag(self.name, "learn_lr", learn_lr)
        self.adaptation_steps = adaptation_steps
        self.test_adaptation_steps = adaptation_steps if test_adaptation_steps is None else test_adaptation_steps
        self.adaptation_lr = float(adaptation_lr)
        self.first_order = first_order
        self.learn_lr = learn_lr
        self.head_init = head_init

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, backbone: nn.Module, task: metareg.TaskInfo) -> None:
        super().setup(backbone, task)
        if self.head_init == "learned" and getattr(task, "episodes", "fixed") == "variable":
            raise metareg.ConfigError(
                f"{self.name}'s learned head has a fixed number of outputs, but --episodes variable draws episodes "
                f"of 5 to 50 ways; use --strategy-opt head_init=zero (a zero head re-learnt per episode fits any "
                f"number of ways), or --episodes fixed"
            )
        if self.head_init == "learned":
            if task.test_ways != task.ways:
                raise metareg.ConfigError(
                    f"{self.name}'s learned head has `ways` = {task.ways} outputs, but evaluation episodes are "
                    f"{task.test_ways}-way (--test-ways {task.test_ways}). Set --test-ways equal to --ways, or use "
                    f"--strategy-opt head_init=zero (a zero head re-learnt per episode fits any number of ways), "
                    f"or use a metric strategy (prototypicalnetworks, metaoptnet) that fits any number of ways."
                )
            self.head = nn.Linear(task.feature_dim, task.ways)
        self.prepare_backbone(backbone)
        if self.learn_lr:
            shapes = {name: p.shape for name, p in self.adaptable_named_parameters(include_frozen=True)}
            if self.head_init == "zero":  # one rate per feature, shared by the classes, so any ways fit
                shapes["head.weight"] = torch.Size([1, task.feature_dim])
                shapes["head.bias"] = torch.Size([1])
            self.inner_lrs = nn.ParameterDict(
                {_key(name): nn.Parameter(torch.full(shape, self.adaptation_lr)) for name, shape in shapes.items()}
            )

    def prepare_backbone(self, backbone: nn.Module) -> None:
        """Hook for subclasses (MAML switches batch norm to batch statistics)."""

    def adaptable_named_parameters(self, include_frozen: bool = False):
        """``(name, parameter)`` pairs of the meta-parameters that the inner loop adapts."""
        raise NotImplementedError

    # -- the inner loop ---------------------------------------------------------------------------
    def _check_ways(self, ways: int) -> None:
        if self.head_init == "learned" and ways != self.head.out_features:
            raise metareg.ConfigError(
                f"{self.name}'s learned head has {self.head.out_features} outputs but these episodes are {ways}-way; "
                f"use episodes with {self.head.out_features} classes, or train with --strategy-opt head_init=zero"
            )

    def _meta_parameters(self, ways: int, like: torch.Tensor, detach: bool):
        params = {name: p for name, p in self.adaptable_named_parameters()}
        if self.head_init == "zero":
            params["head.weight"] = like.new_zeros(ways, self.task.feature_dim)
            params["head.bias"] = like.new_zeros(ways)
        if detach:
            params = {k: v.detach() for k, v in params.items()}
        if self.learn_lr:
            lrs = {k: self.inner_lrs[_key(k)] for k in params}
            if detach:
                lrs = {k: v.detach() for k, v in lrs.items()}
        else:
            lrs = {k: self.adaptation_lr for k in params}
        return params, lrs

    def adapt(self, model, support, support_labels, query, ways: int,
              episodes: metareg.EpisodeBatch | None = None) -> torch.Tensor:
        """Adapted query logits ``(B, Q, ways)`` for inputs already prepared for ``model``; the masks of
        ``episodes``, when it is a padded batch, keep padding out of the inner loop."""
        self._check_ways(ways)
        # Evaluation adapts too but never backpropagates into the meta-parameters: no outer graph.
        params, lrs = self._meta_parameters(ways, support, detach=not self.training)
        steps = self.adaptation_steps if self.training else self.test_adaptation_steps
        masks = {}
        if episodes is not None and episodes.padded:
            masks = dict(support_mask=episodes.support_mask, query_mask=episodes.query_mask,
                         way_mask=episodes.way_mask)
        return adapted_query_logits(
            model, params, lrs, support, support_labels, query, steps=steps, first_order=self.first_order, **masks
        )

    def head_logits(self, params: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        weight = params["head.weight"] if "head.weight" in params else self.head.weight
        bias = params["head.bias"] if "head.bias" in params else self.head.bias
        return F.linear(features, weight, bias)


class MAML(GradientAdaptation):
    """MAML: a few gradient steps on each episode's support set from meta-learnt initial weights.

    The whole model (backbone and a linear head on its features) is adapted, for the whole
    meta-batch at once (torch.func: grad inside vmap over episodes). Second order by default.

    adaptation_steps: inner gradient steps per episode while meta-training.
    adaptation_lr: inner learning rate (0.4 is MAML's Omniglot value; about 0.01 for miniImageNet).
    first_order: drop second-order terms (first-order MAML): cheaper, usually a little less accurate.
    test_adaptation_steps: inner steps at validation/test time; default: same as adaptation_steps
        (MAML's paper used more at test time, e.g. 3).
    learn_lr: Meta-SGD: learn one inner learning rate per weight, initialised to adaptation_lr.
    head_init: 'learned' (MAML: the head's initial weights are meta-learnt; episodes must have
        --ways classes) or 'zero' (the head starts at zero in every episode, so any number of ways works).

    Batch norm: the backbone's batch-norm layers are switched to batch statistics for good
    (running statistics are dropped; same parameters, with a hand-written backward pass because
    torch.func's second derivative through F.batch_norm under vmap is wrong): the
    inner loop normalises with each support batch's statistics, which is what MAML's code does,
    and so does evaluation (transductive: each episode's support and query sets are normalised
    with their own batch statistics, as in MAML's original code). A consequence for `metareg
    predict`: a query image's logits depend on the other images in its batch. Checkpoints hold no
    running statistics for this backbone.

    inner_precision: 'auto': under --precision bf16-mixed the model runs in bfloat16 inside the
        inner loop (weights and images cast explicitly, losses and weight updates in float32);
        otherwise, and always with 'float32', the inner loop runs in float32.

    Mixed precision: autocast cannot wrap torch.func's grad inside vmap (backward fails with a
    dtype mismatch), so MAML switches autocast off and casts explicitly instead. Under
    16-mixed the inner loop stays in float32: float16 inner gradients would need their own loss
    scaling.
    """

    name = "maml"

    # Batch norm uses each batch's own statistics at evaluation too, so a query's answer depends on
    # the queries predicted with it; `metareg predict` says so.
    transductive = True

    # vmap turns each episode's weights into a group of one grouped convolution; in NHWC layout that
    # ran about 10% slower (1.70 vs 1.89 steps/s, Omniglot Conv-4, 32 tasks, 2-core CPU).
    channels_last = False

    def __init__(
        self,
        adaptation_steps: int = 1,
        adaptation_lr: float = 0.4,
        first_order: bool = False,
        test_adaptation_steps: int | None = None,
        learn_lr: bool = False,
        head_init: HeadInit = "learned",
        inner_precision: InnerPrecision = "auto",
    ):
        super().__init__(
            adaptation_steps=adaptation_steps,
            adaptation_lr=adaptation_lr,
            first_order=first_order,
            test_adaptation_steps=test_adaptation_steps,
            learn_lr=learn_lr,
            head_init=head_init,
        )
        self.inner_precision = one_of("maml", "inner_precision", inner_precision, InnerPrecision)
        self._compute_dtype: torch.dtype | None = None

    def prepare_backbone(self, backbone: nn.Module) -> None:
        use_batch_statistics(backbone)

    def adaptable_named_parameters(self, include_frozen: bool = False):
        for name, p in self.backbone.named_parameters():
            if include_frozen or p.requires_grad:  # frozen layers (freeze schedules) stay fixed
                yield "backbone." + name, p
        if self.head_init == "learned":
            yield "head.weight", self.head.weight
            yield "head.bias", self.head.bias

    def _model(self, params: dict[str, torch.Tensor], images: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self._compute_dtype
        if dtype is not None:  # explicit low-precision compute; the float32 weights get float32 gradients
            params = {k: v.to(dtype) for k, v in params.items()}
            images = images.to(dtype)
        body = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
        with sample_mask(self.backbone, mask):  # a padded episode's batch statistics: its real images only
            features = torch.func.functional_call(self.backbone, body, (images,))
        logits = self.head_logits(params, features)
        return logits.float() if dtype is not None else logits

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        device = episodes.support.device
        dtype = autocast_dtype(device)
        self._compute_dtype = dtype if self.inner_precision == "auto" and dtype == torch.bfloat16 else None
        try:
            with full_precision(device):
                return self.adapt(
                    self._model,
                    as_full(episodes.support),
                    episodes.support_labels,
                    as_full(episodes.query),
                    episodes.ways,
                    episodes,
                )
        finally:
            self._compute_dtype = None
