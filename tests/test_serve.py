"""helpers.serve: every request gets exactly the tokens it gets alone; the paged cache holds what it must."""

import copy

import pytest
import torch

from helpers import fastgen, serve


def alone(model, prompt, n):
    """Greedy tokens of one request decoded by itself (the fast decoder, eager)."""
    out = fastgen.FastGPT2(model, compile=False).generate(prompt[None], n)
    return out[0, prompt.numel() :].tolist()


def requests(seed=0):
    g = torch.Generator().manual_seed(seed)
    spec = [(5, 7, 0), (11, 3, 0), (3, 12, 1), (9, 1, 2), (17, 6, 2), (6, 9, 5)]  # prompt, new tokens, arrival
    return [serve.Request(torch.randint(0, 200, (p,), generator=g), n, arrival=a) for p, n, a in spec]


def test_each_request_gets_the_tokens_it_gets_alone(tiny_model):
    engine = serve.Engine(tiny_model, max_batch=3, n_blocks=32, block_size=4)
    done = engine.run(requests())
    for r in done:
        assert r.tokens == alone(tiny_model, r.prompt, r.max_new_tokens)
        assert r.first_token_s is not None and r.done_s >= r.first_token_s
    assert max(r.admitted_step for r in done) > 0  # some waited for a slot: the batch really changed over time
    assert sorted(engine.cache.free) == list(range(32)) and not engine.cache.tables  # every block back in the pool


def test_the_paged_cache_wastes_less_than_a_block_per_sequence(tiny_model):
    engine = serve.Engine(tiny_model, max_batch=3, n_blocks=32, block_size=4)
    cache = engine.cache
    seen = []
    original = engine._decode

    def watch(running, reqs, reserved, start):
        original(running, reqs, reserved, start)
        seen.append((cache.in_use() - cache.held(), len(cache.tables)))

    engine._decode = watch
    engine.run(requests(1))
    assert seen and all(unused < cache.block_size * n for unused, n in seen)  # one partial block each at most
    assert all(0 <= w <= r < 1 for w, r in zip(engine.waste, engine.reserved_waste, strict=True))
    assert max(engine.reserved_waste) > max(engine.waste)  # answers not yet written hold blocks set aside


@pytest.mark.parametrize("step", ["fixed", "dynamic"])
def test_fixed_shape_steps_give_the_same_tokens(tiny_model, step):
    """step="fixed" runs every slot and the whole block table each step (what a CUDA graph captures): the empty
    rows touch only the scratch block, so every request still gets the tokens it gets alone."""
    engine = serve.Engine(tiny_model, max_batch=4, n_blocks=32, block_size=4, max_len=40, step=step)
    for r in engine.run(requests(4)):
        assert r.tokens == alone(tiny_model, r.prompt, r.max_new_tokens)
    assert engine.cache.k[:, : engine.cache.scratch].abs().sum() > 0  # the pool was written


def test_a_cuda_graph_step_gives_the_same_tokens_and_needs_a_gpu(tiny_model):
    """step="graph" replays one captured fixed-shape step; on a CPU it is refused with what to use instead."""
    with pytest.raises(ValueError, match="step takes"):
        serve.Engine(tiny_model, step="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="GPU"):
            serve.Engine(tiny_model, step="graph")
        return
    model = copy.deepcopy(tiny_model).cuda()
    engine = serve.Engine(model, max_batch=4, n_blocks=32, block_size=4, step="graph")
    done = engine.run([serve.Request(r.prompt.cuda(), r.max_new_tokens, r.arrival) for r in requests(5)])
    assert engine.graph is not None
    for r in done:
        assert r.tokens == alone(model, r.prompt, r.max_new_tokens)


def test_requests_arriving_over_time_wait_for_their_second_and_keep_their_tokens(tiny_model):
    """arrival_s: a request is admitted no sooner than its arrival; an idle engine sleeps until then."""
    reqs = requests(6)[:3]
    for j, r in enumerate(reqs):
        r.arrival, r.arrival_s = 0, 0.15 * j
    for r in serve.Engine(tiny_model, max_batch=2, n_blocks=32, block_size=4).run(reqs):
        assert r.first_token_s >= r.arrival_s
        assert r.tokens == alone(tiny_model, r.prompt, r.max_new_tokens)
    with pytest.raises(ValueError, match="arrival_s finite"):  # a time never reached would hang the run
        serve.Engine(tiny_model).run([serve.Request(torch.arange(4), 2, arrival_s=float("nan"))])


def test_a_full_pool_makes_requests_wait_and_bad_requests_are_refused(tiny_model):
    small = serve.Engine(tiny_model, max_batch=4, n_blocks=6, block_size=4)  # room for about one request at a time
    done = small.run(requests(2)[:3])
    for r in done:
        assert r.tokens == alone(tiny_model, r.prompt, r.max_new_tokens)
    with pytest.raises(ValueError, match="larger n_blocks"):
        small.run([serve.Request(torch.arange(20), 10)])
    with pytest.raises(ValueError, match="positions"):
        small.run([serve.Request(torch.arange(10), tiny_model.config.n_positions)])
    with pytest.raises(ValueError, match="max_len"):
        serve.Engine(tiny_model, max_len=8, step="fixed").run([serve.Request(torch.arange(6), 3)])
    with pytest.raises(ValueError, match="max_len takes"):
        serve.Engine(tiny_model, max_len=tiny_model.config.n_positions + 1)
    with pytest.raises(ValueError, match="1-D prompt"):
        small.run([serve.Request(torch.arange(4)[None], 2)])


def test_on_the_pocket_model_with_real_prompts():
    from helpers import bench, models

    model, tok = models.load("pocket", device="cpu", verbose=False)
    prompts = [tok(p, return_tensors="pt")["input_ids"][0] for p in bench.prompts()[:4]]
    reqs = [serve.Request(p, 8 + 4 * i, arrival=i) for i, p in enumerate(prompts)]
    for r in serve.Engine(model, max_batch=2, n_blocks=64, block_size=16).run(reqs):
        assert r.tokens == alone(model, r.prompt, r.max_new_tokens)


def test_sampled_requests_draw_what_they_draw_alone_and_mix_with_greedy_ones(tiny_model):
    """Each sampled request draws from its own seeded generator, so batching with others changes nothing: its
    tokens are those of FastGPT2 alone with the same temperature, top-k and seed."""
    reqs = requests(3)
    for j, r in enumerate(reqs):
        if j % 2 == 0:  # half sampled, half greedy, in one run
            r.temperature, r.top_k, r.seed = 1.0, (None if j == 0 else 20), 100 + j
    done = serve.Engine(tiny_model, max_batch=3, n_blocks=32, block_size=4).run(reqs)
    fast = fastgen.FastGPT2(tiny_model, compile=False)
    for r in done:
        want = fast.generate(r.prompt[None], r.max_new_tokens, temperature=r.temperature, top_k=r.top_k, seed=r.seed)
        assert r.tokens == want[0, r.prompt.numel() :].tolist()
    sampled = [r for r in done if r.temperature > 0]
    assert any(r.tokens != alone(tiny_model, r.prompt, r.max_new_tokens) for r in sampled)  # really sampled
    with pytest.raises(ValueError, match="temperature"):
        serve.Engine(tiny_model).run([serve.Request(torch.arange(4), 2, temperature=-1.0)])
