"""SOMF (Yi et al., 2024, "A safety realignment framework via subspace-oriented model fusion for large language
models"): find the safety-related subspace of a fine-tuned model's weights with a mask learned on safety data,
then fuse the fine-tuned (or merged) model with the initially aligned one through it. Two variants:

- `refusal_mask` (this project's first reading of the paper): M = σ(s) over the coordinates where the models
  differ, θ(s) = θ_ft + σ(s) ⊙ (θ_aligned − θ_ft) trained to minimise the safety demonstrations' loss plus
  λ · mean(σ(s)), and (this project's addition) the loss of rows the fine-tuned model must keep answering;
  θ* = M ⊙ θ_aligned + (1 − M) ⊙ θ_ft with M = [σ(s) > ½] (M marks what comes back).
- `concrete_dpo` (the official code, below `learn_concrete_mask`): a concrete mask m over τ = θ_ft − θ_aligned,
  θ(m) = θ_aligned + τ ⊙ m / mean(m), trained with DPO on safety preference pairs (m marks what stays fine-tuned).

Only coordinates where θ_aligned ≠ θ_ft can matter, so only those tensors get mask logits. Several fine-tuned
models fused at once: merge them first (any merge method), then realign.
"""

from __future__ import annotations

import contextlib

import torch
from torch.func import functional_call
from torch.nn.utils import parametrize

from components.model.device import on_device
from components.model.loss import next_token_loss
from components.resources import return_free_pages


def fuse(aligned: torch.Tensor, finetuned: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SOMF fusion: θ* = M ⊙ θ_aligned + (1 − M) ⊙ θ_ft."""
    return torch.where(mask, aligned, finetuned)


def learn_safety_mask(
    model,
    aligned: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    batches: list[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 0.1,
    sparsity: float = 1.0,
    init_logit: float = -3.0,
    retain_batches: list[dict[str, torch.Tensor]] = (),
) -> dict[str, torch.Tensor]:
    """Boolean mask per differing tensor: True where the safety loss needs the aligned model's value.

    `model` must hold θ_ft: tensors that do not differ are read from it as they are (tied embeddings stay
    tied). `batches` carry the model's keyword inputs (for a causal LM: input_ids, attention_mask, and labels
    that are -100 outside the refusal tokens). Each step adds the loss of one of `retain_batches` (same form: what
    the fine-tuned model must keep doing), so a coordinate that answer needs is not taken back.
    """
    logits = safety_mask_logits(model, aligned, finetuned, batches, steps, lr, sparsity, init_logit, retain_batches)
    return {n: torch.sigmoid(s) > 0.5 for n, s in logits.items()}


def safety_mask_logits(
    model,
    aligned: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    batches: list[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    sparsity: float,
    init_logit: float,
    retain_batches: list[dict[str, torch.Tensor]] = (),
) -> dict[str, torch.Tensor]:
    """The mask logits s that `learn_safety_mask` thresholds, after `steps` Adam steps on
    L(θ(s)) + L_retain(θ(s)) + λ · mean(σ(s)).

    Each differing weight of the model becomes θ(s) through a parametrization (torch.nn.utils.parametrize) that
    computes it from θ_ft, θ_aligned and s where the layer reads it, so with gradient checkpointing no θ(s) outlives
    its layer: it is computed again when the backward pass reaches the layer. Both losses run forward, then one
    backward pass; each tensor's logits take their Adam step from a hook as soon as their gradient is complete
    (the density term λ · mean σ(s) is added there), and the gradient is dropped. What stays between steps is
    θ_ft, θ_aligned (the differing tensors), s and Adam's two moments. The logits equal autograd over the whole
    objective up to the order of a float sum (tests/test_somf.py); the memory it saves is in docs/measurements.md.
    """
    names = differing(model, aligned, finetuned)
    if not names:
        return {}
    interpolations = {n: Interpolation(aligned[n], init_logit) for n in names}
    logits = {n: m.logits for n, m in interpolations.items()}
    # one optimiser per tensor: the same Adam arithmetic, stepped tensor by tensor
    optimizers = {n: torch.optim.Adam([s], lr=lr) for n, s in logits.items()}
    total = sum(s.numel() for s in logits.values())
    density: dict[str, torch.Tensor] = {}
    stepped: set[str] = set()

    def adam_step(name: str, s: torch.Tensor) -> None:
        """∂/∂s of the losses (autograd's, through θ(s)) plus σ′(s) · ∂(λ · mean σ)/∂Σσ, then Adam's step."""
        with torch.no_grad():
            density_term = torch.ops.aten.sigmoid_backward(density[name].expand_as(s), torch.sigmoid(s))
            s.grad = density_term if s.grad is None else s.grad.add_(density_term)
        optimizers[name].step()
        s.grad = None
        stepped.add(name)

    hooks = [s.register_post_accumulate_grad_hook(lambda s, n=n: adam_step(n, s)) for n, s in logits.items()]
    try:
        with interpolated(model, interpolations):
            for step in range(steps):
                density.update(density_gradients(logits, sparsity, total))
                stepped.clear()
                losses = [loss_of(model, batches[step % len(batches)])]
                if retain_batches:
                    losses.append(loss_of(model, retain_batches[step % len(retain_batches)]))
                torch.autograd.backward(losses)
                for n in names:  # a tensor no loss reached still takes the density term's step
                    if n not in stepped:
                        adam_step(n, logits[n])
                # the C allocator keeps what a step freed in its heap unless asked
                return_free_pages()
    finally:
        for hook in hooks:
            hook.remove()
    return {n: s.detach() for n, s in logits.items()}


def differing(model, aligned: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor]) -> list[str]:
    """The model's parameters where θ_aligned ≠ θ_ft (a tied tensor once; one `aligned` leaves out counts as equal)."""
    return [n for n, _ in model.named_parameters() if n in aligned and not torch.equal(aligned[n], finetuned[n])]


class Interpolation(torch.nn.Module):
    """A parametrization of θ_ft: θ(s) = θ_ft + σ(s) ⊙ (θ_aligned − θ_ft), with the logits s its parameter."""

    def __init__(self, aligned: torch.Tensor, init_logit: float):
        super().__init__()
        self.aligned = aligned
        self.logits = torch.nn.Parameter(torch.full(aligned.shape, init_logit, device=aligned.device))

    def forward(self, finetuned: torch.Tensor) -> torch.Tensor:
        return interpolate(finetuned, self.aligned, self.logits)


def interpolate(finetuned: torch.Tensor, aligned: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """θ(s) = θ_ft + σ(s) ⊙ (θ_aligned − θ_ft), in float32."""
    return finetuned.float() + torch.sigmoid(logits) * (aligned - finetuned).float()


def density_gradients(logits: dict[str, torch.Tensor], sparsity: float, total: int) -> dict[str, torch.Tensor]:
    """∂(λ · Σ_n Σσ(s_n) / |s|)/∂(Σσ(s_n)) for each tensor n: autograd over the per-tensor sums alone."""
    with torch.no_grad():
        sums = {n: torch.sigmoid(s).sum() for n, s in logits.items()}
    for value in sums.values():
        value.requires_grad_()
    (sparsity * (sum(sums.values()) / total)).backward()
    return {n: value.grad for n, value in sums.items()}


def loss_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's loss on the batch; a causal LM's with its head over the labelled (refusal) tokens only."""
    return next_token_loss(model, on_device(batch, model))


@contextlib.contextmanager
def interpolated(model, interpolations: dict[str, Interpolation]):
    """The model's weights named in `interpolations` read as θ(s) (every module that holds a tied tensor), only the
    logits get gradients, with gradient checkpointing where the model has it; afterwards the model is as it was."""
    flags = {p: p.requires_grad for p in model.parameters()}
    # training mode is what turns a transformers model's checkpointing on: only where it switches no dropout on
    checkpointing = (
        getattr(model, "supports_gradient_checkpointing", False)
        and not getattr(model.config, "attention_dropout", 0.0)
        and not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    )
    for p in model.parameters():
        p.requires_grad_(False)
    holders = {id(p): n for n, p in model.named_parameters() if n in interpolations}
    sites = [
        (module, leaf, holders[id(p)])
        for module in model.modules()
        for leaf, p in list(module.named_parameters(recurse=False))
        if id(p) in holders
    ]
    for module, leaf, name in sites:
        parametrize.register_parametrization(module, leaf, interpolations[name])
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(bool(checkpointing))
    try:
        yield
    finally:
        for module, leaf, _ in sites:
            parametrize.remove_parametrizations(module, leaf, leave_parametrized=False)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()


# SOMF as its official code does it (xinykou/safety_realignment): a concrete (relaxed Bernoulli) mask over the task
# vector τ = θ_ft − θ_aligned, temperature 0.5, logits starting at 0, the masked vector rescaled by 1/mean(m) per
# tensor, learned with DPO on safety preference pairs against the fine-tuned model; exported deterministically.
# Differences from that code, on purpose: full weights instead of LoRA A/B; the DPO reference is θ_ft (the official
# reference draws a fresh random mask each step, whose expectation is θ_ft); the export thresholds σ(ℓ) at ½ where
# the official export draws one more random sample.


def concrete_sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """A relaxed Bernoulli draw (Maddison et al., 2017): m = σ((ℓ + log u − log(1 − u)) / T), u ~ U(0, 1)."""
    # drawn on the CPU generator, so a GPU run draws the same noise
    u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(logits.device)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def concrete_fusion(
    aligned: torch.Tensor, task_vector: torch.Tensor, mask: torch.Tensor, rescale: bool = True
) -> torch.Tensor:
    """θ(m) = θ_aligned + τ ⊙ m / mean(m) (rescale, the official code) or θ_aligned + τ ⊙ m; empty mask: θ_aligned."""
    kept = mask.float().mean()
    if kept == 0:
        return aligned
    return aligned + task_vector * mask / kept if rescale else aligned + task_vector * mask


def export_mask(logits: torch.Tensor) -> torch.Tensor:
    """The deterministic mask: m = [σ(ℓ) > ½]."""
    return torch.sigmoid(logits) > 0.5


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO (Rafailov et al., 2023): −log σ(β[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))])."""
    return -torch.nn.functional.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ log p(token) over the labelled (≠ −100) tokens of each row, for next-token logits."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (labels != -100)).sum(dim=-1)


def learn_concrete_mask(
    model,
    aligned: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    pairs: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
    steps: int,
    lr: float = 1e-3,
    temperature: float = 0.5,
    init_logit: float = 0.0,
    beta: float = 0.1,
    rescale: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Boolean mask per differing tensor: True where the fused model keeps the fine-tuned update.

    `model` holds θ_ft; `rescale` divides the kept update by mean(m) (`concrete_fusion`). `pairs` are (chosen
    batch, rejected batch) of the model's keyword inputs, with `labels` −100 outside the answer tokens."""
    names = differing(model, aligned, finetuned)
    if not names:
        return {}
    task = {n: (finetuned[n] - aligned[n]).float() for n in names}
    base = {n: aligned[n].float() for n in names}
    logits = {n: torch.full(task[n].shape, init_logit, device=task[n].device, requires_grad=True) for n in names}
    optimizer = torch.optim.Adam(logits.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.eval()

    def logprobs(batch: dict[str, torch.Tensor], params=None) -> torch.Tensor:
        batch = on_device(batch, model)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs) if params is None else functional_call(model, params, args=(), kwargs=inputs)
        return sequence_logprobs(out.logits, batch["labels"])

    with torch.no_grad():
        reference = [(logprobs(chosen), logprobs(rejected)) for chosen, rejected in pairs]
    for step in range(steps):
        index = step % len(pairs)
        chosen, rejected = pairs[index]
        params = {
            n: concrete_fusion(base[n], task[n], concrete_sample(logits[n], temperature, generator), rescale)
            for n in names
        }
        loss = dpo_loss(logprobs(chosen, params), logprobs(rejected, params), *reference[index], beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {n: export_mask(logits[n].detach()) for n in names}
