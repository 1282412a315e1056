"""Sampling of bitwise tokens: temperature, top-k and top-p on each bit's two-way distribution."""

import torch


def uniform_noise(shape, generator, device) -> torch.Tensor:
    """U(0, 1) noise; with a list of generators, sample i draws from `generator[i]` alone, so a batch reproduces
    the same samples run one by one."""
    if isinstance(generator, list):
        return torch.stack([torch.rand(shape[1:], generator=g, device=g.device).to(device) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def sample_bits(
    logits_BNd: torch.Tensor,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Draw every bit from `sigmoid(logit / temperature)`.

    Each bit is a two-way choice, so `top_k = 1` is greedy and `top_k >= 2` (or 0) keeps both values; `top_p` keeps
    only the likelier value when its probability reaches `top_p`.
    """
    p_one = torch.sigmoid(logits_BNd.float() / temperature)
    noise = uniform_noise(p_one.shape, generator, p_one.device)
    sampled = noise < p_one
    greedy = p_one > 0.5
    use_greedy = torch.maximum(p_one, 1 - p_one) >= top_p if top_p < 1.0 else torch.zeros_like(greedy)
    if top_k == 1:
        use_greedy = torch.ones_like(greedy)
    return torch.where(use_greedy, greedy, sampled)
