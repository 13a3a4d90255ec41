import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import checks, models, prune


@pytest.fixture
def gpt2():
    """A tiny GPT-2 with 4 heads and the default MLP width (4 x 32 = 128 neurons per block)."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def ids():
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_prunable_layers_are_the_block_linears_not_the_embeddings(gpt2):
    names = list(prune.prunable(gpt2))
    assert len(names) == 4 * 3
    assert names[:4] == [f"transformer.h.0.{n}" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert not any("wte" in n or "lm_head" in n for n in names)


def test_per_layer_pruning_reaches_the_sparsity_in_every_layer(gpt2):
    pruned = prune.magnitude_prune(gpt2, 0.6, scope="layer")
    for name, value in prune.sparsity(pruned, per_layer=True).items():
        assert value == pytest.approx(0.6, abs=1e-3), name
    assert prune.sparsity(gpt2) == 0.0  # the argument is left untouched
    assert torch.equal(pruned.transformer.wte.weight, gpt2.transformer.wte.weight)


def test_global_pruning_ranks_all_layers_together(gpt2):
    pruned = prune.magnitude_prune(gpt2, 0.6, scope="global")
    assert prune.sparsity(pruned) == pytest.approx(0.6, abs=1e-4)
    per_layer = prune.sparsity(pruned, per_layer=True).values()
    assert max(per_layer) - min(per_layer) > 0.1  # layers with small weights lose more
    kept, dropped = [], []
    for (_, ref), (_, layer) in zip(prune.prunable(gpt2).items(), prune.prunable(pruned).items(), strict=True):
        zero = layer.weight == 0
        kept.append(ref.weight[~zero].abs().min())
        dropped.append(ref.weight[zero].abs().max())
    assert min(kept) >= max(dropped)


def test_pruning_is_permanent_unless_asked_otherwise(gpt2, ids):
    pruned = prune.magnitude_prune(gpt2, 0.5)
    names = [n for n, _ in pruned.named_parameters()] + [n for n, _ in pruned.named_buffers()]
    assert not any("weight_orig" in n or "weight_mask" in n for n in names)
    assert all(not m._forward_pre_hooks for m in pruned.modules())

    masked = prune.magnitude_prune(gpt2, 0.5, permanent=False)
    assert any(n.endswith("weight_orig") for n, _ in masked.named_parameters())
    zeros = {n: layer.weight == 0 for n, layer in prune.prunable(masked).items()}
    masked.train()
    opt = torch.optim.SGD(masked.parameters(), lr=1.0)
    masked(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    prune.make_permanent(masked)
    for name, layer in prune.prunable(masked).items():
        assert (layer.weight[zeros[name]] == 0).all(), f"{name}: a pruned weight came back during training"
    assert prune.sparsity(masked) == pytest.approx(0.5, abs=1e-3)


def test_zero_sparsity_changes_nothing(gpt2, ids):
    for scope in prune.SCOPES:
        assert torch.equal(logits(prune.magnitude_prune(gpt2, 0.0, scope=scope), ids), logits(gpt2, ids))
    assert torch.equal(logits(prune.prune_neurons(gpt2, 0.0), ids), logits(gpt2, ids))
    assert torch.equal(logits(prune.mask_heads(gpt2, 0.0), ids), logits(gpt2, ids))
    assert torch.equal(logits(prune.drop_blocks(gpt2, []), ids), logits(gpt2, ids))


def test_bad_arguments_are_clear_errors(gpt2):
    with pytest.raises(ValueError, match="layer, global"):
        prune.magnitude_prune(gpt2, 0.5, scope="row")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune.magnitude_prune(gpt2, 1.5)
    with pytest.raises(ValueError, match="Not prunable"):
        prune.magnitude_prune(gpt2, 0.5, layers=["transformer.wte"])
    with pytest.raises(ValueError, match="at least one"):
        prune.drop_blocks(gpt2, [0, 1, 2])


def test_mask_2_4_keeps_the_two_largest_of_every_four():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    mask = prune.mask_2_4(w)
    groups = mask.reshape(16, -1, 4)
    assert (groups.sum(-1) == 2).all()
    size = w.abs().reshape(16, -1, 4)
    kept_min = torch.where(groups, size, torch.inf).amin(-1)
    dropped_max = torch.where(groups, -torch.inf, size).amax(-1)
    assert (kept_min >= dropped_max).all()
    assert prune.mask_2_4(torch.tensor([[0.1, -5.0, 0.2, 3.0]])).tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="multiple of 4"):
        prune.mask_2_4(torch.randn(4, 6))


def test_prune_2_4_follows_the_pattern_along_the_inputs(gpt2):
    pruned = prune.prune_2_4(gpt2)
    assert prune.sparsity(pruned) == pytest.approx(0.5)
    for layer in prune.prunable(pruned).values():
        w = layer.weight.t()  # Conv1D stores (in, out); the pattern runs along the inputs
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) == 2).all()


def test_importance_scores_have_one_value_per_neuron_and_head(gpt2):
    tokens = torch.randint(0, 256, (100,), generator=torch.Generator().manual_seed(2))
    for data in (None, tokens):
        neurons = prune.neuron_importance(gpt2, data)
        heads = prune.head_importance(gpt2, data)
        assert [s.shape for s in neurons] == [torch.Size([128])] * 3
        assert heads.shape == (3, 4) and (heads >= 0).all()
    with torch.no_grad():
        gpt2.transformer.h[1].mlp.c_proj.weight[5] = 0  # neuron 5 of block 1 can add nothing
    assert prune.neuron_importance(gpt2, tokens)[1][5] == 0


def test_neuron_pruning_makes_a_smaller_model_that_round_trips(gpt2, ids, tmp_path):
    scores = [torch.arange(128.0) for _ in range(3)]  # keep the highest-numbered neurons
    small = prune.prune_neurons(gpt2, 0.25, scores)
    assert small.config.n_inner == 96 and gpt2.config.n_inner is None
    removed = 3 * 32 * (32 + 1 + 32)  # per block: 32 neurons x (c_fc column + its bias + c_proj row)
    assert models.count_params(small) == models.count_params(gpt2) - removed
    assert torch.equal(small.transformer.h[0].mlp.c_fc.weight, gpt2.transformer.h[0].mlp.c_fc.weight[:, 32:])
    small.save_pretrained(tmp_path)
    back = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert back.config.n_inner == 96 and models.count_params(back) == models.count_params(small)
    assert torch.equal(logits(back, ids), logits(small, ids))


def test_removing_dead_neurons_changes_nothing(gpt2, ids):
    with torch.no_grad():
        for block in gpt2.transformer.h:
            block.mlp.c_proj.weight[:64] = 0  # half the neurons write nothing to the residual stream
    small = prune.prune_neurons(gpt2, 0.5, prune.neuron_importance(gpt2))
    assert small.config.n_inner == 64
    assert torch.allclose(logits(small, ids), logits(gpt2, ids), atol=1e-5)


def test_masked_heads_contribute_nothing(gpt2, ids):
    scores = torch.tensor([[0.0, 1, 2, 3]] * 3)  # head 0 is the least important in every block
    masked = prune.mask_heads(gpt2, 0.25, scores)
    hd = 32 // 4
    for block in masked.transformer.h:
        assert (block.attn.c_proj.weight[:hd] == 0).all() and (block.attn.c_proj.weight[hd:] != 0).all()
    assert models.count_params(masked) == models.count_params(gpt2)
    with torch.no_grad():  # the same as zeroing head 0's output rows only
        ref = prune.mask_heads(gpt2, 0.0)
        for block in ref.transformer.h:
            block.attn.c_proj.weight[:hd] = 0
    assert torch.allclose(logits(masked, ids), logits(ref, ids), atol=1e-6)


def test_dropping_blocks_round_trips(gpt2, ids, tmp_path):
    short = prune.drop_blocks(gpt2, [1])
    assert short.config.n_layer == 2
    assert torch.equal(short.transformer.h[1].mlp.c_fc.weight, gpt2.transformer.h[2].mlp.c_fc.weight)
    short.save_pretrained(tmp_path)
    back = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(back, ids), logits(short, ids))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error; the GPU path is exercised by notebook 04")
def test_semi_structured_conversion_needs_a_gpu(gpt2):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        prune.to_semi_structured_24(gpt2)


def test_csr_timing_rows_are_consistent():
    rows = prune.csr_vs_dense([(64, 128)], [0.0, 0.9], repeats=1, working_set_mib=1)
    assert [r["sparsity"] for r in rows] == [0.0, 0.9]
    assert rows[1]["measured_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rows[0]["dense_bytes"] == 64 * 128 * 4
    nnz = round(0.1 * 64 * 128)
    assert rows[1]["csr_bytes"] == nnz * (4 + 8) + (128 + 1) * 8  # values, column indices, row pointers
    assert all(r["dense_us"] > 0 and r["csr_us"] > 0 and r["ratio"] > 0 for r in rows)


def test_magnitude_mask_check_explains_mistakes():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    threshold = w.abs().flatten().kthvalue(round(0.3 * w.numel())).values
    assert checks.check_magnitude_mask(w.abs() > threshold, w, 0.3)
    with pytest.raises(AssertionError, match="wrong way round"):
        checks.check_magnitude_mask(w.abs() <= threshold, w, 0.3)
    with pytest.raises(AssertionError, match="by value, not by magnitude"):
        checks.check_magnitude_mask(w > w.flatten().kthvalue(round(0.3 * w.numel())).values, w, 0.3)
    with pytest.raises(AssertionError, match="should drop 30.0%"):
        checks.check_magnitude_mask(w.abs() > w.abs().median(), w, 0.3)
    with pytest.raises(AssertionError, match="must match"):
        checks.check_magnitude_mask(torch.ones(3), w, 0.3)
