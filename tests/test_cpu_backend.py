"""The CPU-backend hooks, the input_ids hook, the ``sgl_kernel`` stand-in and the shipped configs, in-process.

The hooks are called directly with SGLang's real functions where that is cheap
(``_handle_dspark``, the pins) and with stand-in objects for a worker, a layer and an
attention backend otherwise; the servers in ``test_server.py`` run them for real.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from dspark_sgl.sglang_plugin import cpu_backend
from dspark_sgl.sglang_plugin.cpu_attention import block_attention
from dspark_sgl.sglang_plugin.request_checks import validate_input_ids

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = ROOT / "tests" / "stubs" / "sgl_kernel" / "__init__.py"
needs_sglang = pytest.mark.skipif(
    importlib.util.find_spec("sglang") is None, reason="sglang is not installed"
)


@pytest.fixture(scope="module", autouse=True)
def _torchvision_stand_in():
    """SGLang imports torchvision at module level; PyPI's cannot load against CPU torch."""
    added = importlib.util.find_spec("torchvision") is None
    if added:
        sys.path.insert(0, str(ROOT / "tests" / "stubs"))
    yield
    if added:
        sys.path.remove(str(ROOT / "tests" / "stubs"))


@pytest.fixture(scope="module")
def sgl_kernel():
    """The stand-in loaded under another name, so no real ``sgl_kernel`` import is shadowed."""
    spec = importlib.util.spec_from_file_location("sgl_kernel_stand_in", STAND_IN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- sgl_kernel stand-in


def _pool(rows=4, width=12):
    return torch.arange(rows * width, dtype=torch.int32).view(rows, width) + 100


def test_assign_req_to_token_pool_and_extend_cache_locs_are_inverse(sgl_kernel):
    req_to_token = torch.zeros(4, 12, dtype=torch.int32)
    rows, start, end = torch.tensor([2, 0]), torch.tensor([1, 3]), torch.tensor([4, 5])
    locs = torch.tensor([7, 8, 9, 10, 11], dtype=torch.int64)
    sgl_kernel.assign_req_to_token_pool_cpu(rows, req_to_token, start, end, locs, 12)
    assert req_to_token[2, 1:4].tolist() == [7, 8, 9] and req_to_token[0, 3:5].tolist() == [10, 11]
    assert int(req_to_token.count_nonzero()) == 5
    back = torch.full((5,), -1, dtype=torch.int64)
    sgl_kernel.assign_extend_cache_locs_cpu(rows, req_to_token, start, end, back, 12)
    assert back.tolist() == locs.tolist()


def test_assign_draft_cache_locs_contiguous(sgl_kernel):
    pool = _pool()
    out = torch.zeros(6, dtype=torch.int64)
    sgl_kernel.assign_draft_cache_locs_contiguous_cpu(
        torch.tensor([3, 1]), pool, torch.tensor([2, 9]), out, 12, 1, 3
    )
    assert out.tolist() == pool[3, 2:5].tolist() + pool[1, 9:12].tolist()


def test_copy_all_layer_kv_cache_moves_rows_in_every_buffer(sgl_kernel):
    buffers = [
        torch.arange(40, dtype=torch.float32).view(10, 4),
        torch.arange(60, dtype=torch.float16).view(10, 6),
    ]
    expected = [b.clone() for b in buffers]
    for b in expected:
        b[[5, 6]] = b[[1, 2]]
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in buffers], dtype=torch.int64)
    sgl_kernel.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([5, 6]), torch.tensor([1, 2]))
    for got, want in zip(buffers, expected, strict=True):
        assert torch.equal(got, want)


def test_fill_bonus_tokens_and_accept_out_cache_loc(sgl_kernel):
    accept = torch.tensor([[10, 11, 12], [20, 21, 22]])
    bonus = torch.zeros(2, dtype=torch.int64)
    sgl_kernel.fill_bonus_tokens_cpu(accept, torch.tensor([2, 3], dtype=torch.int32), bonus, 3)
    assert bonus.tolist() == [11, 22]
    out = torch.zeros(3, dtype=torch.int64)
    index = torch.tensor([[0, -1, 2], [-1, 4, -1]])
    sgl_kernel.fill_accept_out_cache_loc_cpu(index, torch.tensor([50, 51, 52, 53, 54]), out)
    assert out.tolist() == [50, 52, 54]


def _uncovered_calls(k):
    """(stood-in function, words of its error, a call with something it does not cover)."""
    pool, rows, ok = _pool(), torch.tensor([0]), torch.zeros(8, dtype=torch.int64)
    one, two, twelve = torch.tensor([1]), torch.tensor([2]), torch.tensor([12])
    zero = torch.tensor([0])
    ptr = torch.tensor([1], dtype=torch.int64)
    assign = "assign_req_to_token_pool_cpu"
    extend = "assign_extend_cache_locs_cpu"
    draft = "assign_draft_cache_locs_contiguous_cpu"
    copy = "copy_all_layer_kv_cache_cpu"
    bonus = "fill_bonus_tokens_cpu"
    accept = "fill_accept_out_cache_loc_cpu"
    return [
        (
            assign,
            "start_offset",
            lambda: k.assign_req_to_token_pool_cpu(rows, pool, torch.tensor([0.0]), two, ok, 12),
        ),
        (
            assign,
            "start <= end",
            lambda: k.assign_req_to_token_pool_cpu(rows, pool, torch.tensor([3]), two, ok, 12),
        ),
        (extend, "pool_len", lambda: k.assign_extend_cache_locs_cpu(rows, pool, zero, two, ok, 11)),
        (
            extend,
            "req_pool_indices",
            lambda: k.assign_extend_cache_locs_cpu(torch.tensor([9]), pool, zero, two, ok, 12),
        ),
        (extend, "segments need", lambda: k.assign_extend_cache_locs_cpu(rows, pool, zero, twelve, ok, 12)),
        (draft, "topk", lambda: k.assign_draft_cache_locs_contiguous_cpu(rows, pool, zero, ok, 12, 0, 3)),
        (
            draft,
            "on the CPU",
            lambda: k.assign_draft_cache_locs_contiguous_cpu(
                rows, pool, torch.tensor([0], device="meta"), ok, 12, 1, 3
            ),
        ),
        (copy, "strides", lambda: k.copy_all_layer_kv_cache_cpu(ptr, zero, one, zero)),
        (
            copy,
            "one length",
            lambda: k.copy_all_layer_kv_cache_cpu(ptr, torch.tensor([4]), torch.tensor([1, 2]), zero),
        ),
        (
            copy,
            "data_ptrs",
            lambda: k.copy_all_layer_kv_cache_cpu(torch.tensor([1.0]), torch.tensor([4]), one, zero),
        ),
        (
            bonus,
            "accept_stride",
            lambda: k.fill_bonus_tokens_cpu(
                torch.zeros(2, 3, dtype=torch.int64),
                torch.tensor([0, 1]),
                torch.zeros(2, dtype=torch.int64),
                3,
            ),
        ),
        (
            accept,
            "accept_index",
            lambda: k.fill_accept_out_cache_loc_cpu(
                torch.tensor([7]), torch.tensor([1, 2]), torch.zeros(1, dtype=torch.int64)
            ),
        ),
        (accept, "torch.Tensor", lambda: k.fill_accept_out_cache_loc_cpu([0], one, torch.zeros(1))),
    ]


def test_every_stand_in_raises_on_what_it_does_not_cover(sgl_kernel):
    calls = _uncovered_calls(sgl_kernel)
    assert {name for name, _, _ in calls} == set(sgl_kernel.STOOD_IN)
    for name, what, call in calls:
        with pytest.raises((ValueError, TypeError), match=f"sgl_kernel stand-in: .*{what}"):
            call()
        assert name in sgl_kernel.STOOD_IN


@pytest.mark.parametrize("name", ["build_tree_kernel_efficient_cpu", "verify_tree_greedy_cpu"])
def test_imported_only_names_raise_when_called(sgl_kernel, name):
    assert name in sgl_kernel.IMPORTED_ONLY
    with pytest.raises(NotImplementedError, match=name):
        getattr(sgl_kernel, name)()


def test_other_names_are_missing(sgl_kernel):
    with pytest.raises(AttributeError, match="fused_moe_cpu"):
        sgl_kernel.fused_moe_cpu  # noqa: B018


# --------------------------------------------------------------------------- pins and registration


@needs_sglang
def test_pins_hold_for_the_installed_sglang():
    cpu_backend.check_pins()


@needs_sglang
@pytest.mark.parametrize(
    "hook, version, message",
    [
        (cpu_backend.CPU_HOOKS[0], "0.5.24", "cpu_device: installed sglang is 0.5.24"),
        (
            cpu_backend.CpuHook("cpu_moved", "sglang.srt.nowhere.f", "AROUND", "x", "y"),
            None,
            "cpu_moved: target",
        ),
        (
            cpu_backend.CpuHook("cpu_changed", cpu_backend.CPU_HOOKS[1].target, "AROUND", "x", "gone()"),
            None,
            "cpu_changed: target no longer contains 'gone\\(\\)'",
        ),
    ],
)
def test_pins_fail_loudly_with_the_hook_name(hook, version, message):
    with pytest.raises(RuntimeError, match=f"dspark_sgl CPU hook {message}"):
        cpu_backend.check_pins((hook,), version=version)


@needs_sglang
def test_cpu_hooks_register_only_under_sglangs_cpu_engine(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from dspark_sgl.plugin import register_cpu_backend

    monkeypatch.delenv("SGLANG_USE_CPU_ENGINE", raising=False)
    assert register_cpu_backend() == []
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", "1")
    saved = {k: list(v) for k, v in HookRegistry._hooks.items()}
    try:
        targets = register_cpu_backend()
        assert targets == [hook.target for hook in cpu_backend.CPU_HOOKS]
        assert register_cpu_backend() == []  # both entry points loaded: each hook once
    finally:
        HookRegistry._hooks.clear()
        HookRegistry._hooks.update(saved)


# --------------------------------------------------------------------------- the hooks


@needs_sglang
def test_handle_dspark_accepts_the_cpu_and_leaves_the_device_alone(tmp_path):
    from sglang.srt.arg_groups.model_override_base import resolving_view
    from sglang.srt.arg_groups.speculative_hook import _handle_dspark
    from sglang.srt.server_args import ServerArgs

    def args() -> ServerArgs:
        return ServerArgs(
            model_path=str(ROOT / "models" / "target"),
            device="cpu",
            speculative_algorithm="DSPARK",
            speculative_draft_model_path=str(ROOT / "models" / "dspark"),
        )

    with pytest.raises(ValueError, match="only supports CUDA, NPU or XPU"):
        _handle_dspark(args())
    server_args = args()
    cpu_backend.handle_dspark_on_cpu(_handle_dspark, server_args)
    view = resolving_view(server_args)
    assert (
        view.device == "cpu" and int(view.speculative_num_draft_tokens) == 8
    )  # gamma 7 from the draft config
    assert all("device" not in declared for _, declared in server_args._resolved_overrides)


def test_qk_norm_rope_hook_clears_the_triton_flag_on_cpu_only():
    seen = []

    def original(self, positions, hidden, *args, **kwargs):
        seen.append(self.use_table_qk_norm_rope)
        return "out"

    layer = types.SimpleNamespace(use_table_qk_norm_rope=True)
    assert (
        cpu_backend.dflash_attention_forward(original, layer, None, torch.zeros(2, device="meta"), None)
        == "out"
    )
    assert seen == [True]
    assert cpu_backend.dflash_attention_forward(original, layer, None, torch.zeros(2), None) == "out"
    assert seen == [True, False] and layer.use_table_qk_norm_rope is False


def test_record_stream_is_a_no_op_for_the_cpu_step_only():
    def original(self, batch, on_publish):
        batch.seq_lens.record_stream(torch.get_device_module(self.device).current_stream())
        return "result"

    batch = types.SimpleNamespace(seq_lens=torch.tensor([3, 4]))
    with pytest.raises((TypeError, RuntimeError)):  # what SGLang's own step does on the CPU
        original(types.SimpleNamespace(device="cpu"), batch, None)
    assert (
        cpu_backend.dspark_forward_decode(original, types.SimpleNamespace(device="cpu"), batch, None)
        == "result"
    )
    assert "record_stream" not in vars(batch.seq_lens)  # the tensor's own method is back
    with pytest.raises((TypeError, RuntimeError)):  # a non-CPU worker gets SGLang's call unchanged
        cpu_backend.dspark_forward_decode(original, types.SimpleNamespace(device="meta"), batch, None)


class _KvPool:
    def __init__(self, k, v):
        self.k, self.v, self.writes = k, v, []

    def set_kv_buffer(self, layer, loc, k, v):
        self.writes.append(loc.loc)
        self.k[self.writes[-1]] = k.view(-1, *self.k.shape[1:])
        self.v[self.writes[-1]] = v.view(-1, *self.v.shape[1:])

    def get_key_buffer(self, layer_id):
        return self.k

    def get_value_buffer(self, layer_id):
        return self.v


@needs_sglang
@pytest.mark.parametrize("ragged", [True, False])
@pytest.mark.parametrize("attn_type", ["DECODER", "ENCODER_ONLY"])
def test_torch_native_target_verify_runs_block_attention(ragged, attn_type):
    from sglang.srt.layers.radix_attention import AttentionType

    gen = torch.Generator().manual_seed(5)
    heads, kv_heads, dim, slots = 4, 2, 8, 64
    prefix_lens, q_lens = [5, 9], ([2, 3] if ragged else [3, 3])
    req_to_token = torch.zeros(3, 32, dtype=torch.int32)
    req_to_token[2, :5] = torch.arange(10, 15)
    req_to_token[0, :9] = torch.arange(20, 29)
    block_loc = torch.arange(40, 40 + sum(q_lens))
    pool = _KvPool(
        torch.randn(slots, kv_heads, dim, generator=gen), torch.randn(slots, kv_heads, dim, generator=gen)
    )
    backend = types.SimpleNamespace(
        token_to_kv_pool=pool,
        req_to_token_pool=types.SimpleNamespace(req_to_token=req_to_token),
        swa_out_cache_loc=None,
    )
    layer = types.SimpleNamespace(
        is_cross_attention=False,
        sliding_window_size=-1,
        logit_cap=0.0,
        tp_q_head_num=heads,
        qk_head_dim=dim,
        v_head_dim=dim,
        tp_k_head_num=kv_heads,
        layer_id=0,
        scaling=dim**-0.5,
        attn_type=getattr(AttentionType, attn_type),
    )
    layout = (
        types.SimpleNamespace(verify_lens_cpu=q_lens, verify_lens=torch.tensor(q_lens)) if ragged else None
    )
    batch = types.SimpleNamespace(
        forward_mode=types.SimpleNamespace(is_target_verify=lambda: True),
        extend_prefix_lens=None,
        out_cache_loc=block_loc,
        seq_lens=torch.tensor(prefix_lens),
        req_pool_indices=torch.tensor([2, 0]),
        spec_info=types.SimpleNamespace(ragged_verify_layout=layout),
    )
    n = sum(q_lens)
    q = torch.randn(n, heads * dim, generator=gen)
    k, v = torch.randn(n, kv_heads * dim, generator=gen), torch.randn(n, kv_heads * dim, generator=gen)

    def original(*args):
        raise AssertionError("SGLang's forward_extend must not run for a CPU TARGET_VERIFY batch")

    out = cpu_backend.torch_native_forward_extend(original, backend, q, k, v, layer, batch)
    assert out.shape == q.shape
    assert torch.equal(pool.k[block_loc], k.view(n, kv_heads, dim))  # the block's K/V were saved first
    expected = block_attention(
        q.view(n, heads, dim),
        pool.k,
        pool.v,
        req_to_token,
        [2, 0],
        prefix_lens,
        q_lens,
        block_loc,
        causal=attn_type == "DECODER",
        scaling=layer.scaling,
    )
    torch.testing.assert_close(out, expected.view(n, heads * dim))
    layer.sliding_window_size = 16
    with pytest.raises(NotImplementedError, match="cpu_verify_attention: a sliding window"):
        cpu_backend.torch_native_forward_extend(original, backend, q, k, v, layer, batch)


def test_torch_native_other_batches_go_to_sglang():
    batch = types.SimpleNamespace(forward_mode=types.SimpleNamespace(is_target_verify=lambda: False))
    marker = object()
    got = cpu_backend.torch_native_forward_extend(
        lambda *a: marker, None, torch.zeros(1), None, None, None, batch
    )
    assert got is marker


# --------------------------------------------------------------------------- request validation


@pytest.mark.parametrize(
    "ids, message",
    [
        ([], "the prompt is empty"),
        ([1, 4096], r"input_ids\[1\] = 4096"),
        ([-1], r"input_ids\[0\] = -1"),
        ([True], "input_ids"),
        ([1.0], "input_ids"),
    ],
)
def test_input_ids_outside_the_vocabulary_are_refused(ids, message):
    manager = types.SimpleNamespace(model_config=types.SimpleNamespace(vocab_size=4096))
    with pytest.raises(ValueError, match=message):
        validate_input_ids(manager, types.SimpleNamespace(), ids)


def test_valid_and_multimodal_requests_pass():
    manager = types.SimpleNamespace(model_config=types.SimpleNamespace(vocab_size=4096))
    assert validate_input_ids(manager, types.SimpleNamespace(), [0, 4095]) is None
    assert validate_input_ids(manager, types.SimpleNamespace(image_data=["x"]), [10**6]) is None


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name", ["target", "dspark", "dflash"])
def test_every_shipped_checkpoint_config_loads_through_transformers(name):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ROOT / "models" / name)
    assert len(config.layer_types) == config.num_hidden_layers


def test_transformers_refuses_a_layer_types_list_longer_than_the_layers(tmp_path):
    from transformers import AutoConfig

    shutil.copy(ROOT / "models" / "dspark" / "config.json", tmp_path / "config.json")
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["layer_types"] = ["full_attention"] * (raw["num_hidden_layers"] + 2)  # what build.py used to ship
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(Exception, match="layer_types"):
        AutoConfig.from_pretrained(tmp_path)


def test_draft_config_from_a_target_gets_one_layer_type_per_layer():
    from transformers import AutoConfig, Qwen3Config

    from dspark_sgl.train import draft_config_from_target

    target = AutoConfig.from_pretrained(ROOT / "models" / "target")
    raw = draft_config_from_target(
        target, num_layers=2, block_size=7, target_layer_ids=None, mask_token_id=3, markov_rank=64
    )
    assert raw["layer_types"] == ["full_attention"] * 2
    Qwen3Config(**{k: v for k, v in raw.items() if k != "architectures"})


def test_the_cpu_backend_entry_point_is_declared():
    tomllib = pytest.importorskip("tomllib")
    from dspark_sgl import plugin

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"]["sglang.srt.plugins"]
    assert declared == {
        "dspark_sgl": "dspark_sgl.plugin:register",
        "dspark_sgl_cpu": "dspark_sgl.plugin:register_cpu_backend",
    }
    assert callable(plugin.register_cpu_backend)
