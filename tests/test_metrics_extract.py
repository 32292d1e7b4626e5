"""Sharded, streaming feature extraction over the mesh."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.eval.metrics import extract, frechet
from codi_jax.parallel.mesh import make_mesh


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return {"features": h, "sharding_probe": jnp.sum(x, axis=(1, 2))}


@pytest.fixture(scope="module")
def tiny():
    model = Tiny()
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4)))["params"]
    return model, params


def test_streamed_sharded_features_equal_one_unsharded_call(tiny, monkeypatch):
    model, params = tiny
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    assert mesh.shape["data"] == len(jax.devices()) == 8
    shardings, traces = [], []
    shard = extract.mesh_lib.shard_host_batch
    monkeypatch.setattr(extract.mesh_lib, "shard_host_batch",
                        lambda x, m: shardings.append(shard(x, m).sharding) or shard(x, m))

    def fn(p, x):
        traces.append(x.shape)
        return model.apply({"params": p}, x)

    extractor = extract.FeatureExtractor(fn, params, mesh, batch_size=8)
    data = np.random.default_rng(0).standard_normal((21, 4, 4)).astype(np.float32)
    outs = list(extractor.stream(extract.batched(iter(data), 8)))
    assert [len(o["features"]) for o in outs] == [8, 8, 5]  # the short last batch comes back unpadded
    got = np.concatenate([o["features"] for o in outs])
    want = np.asarray(model.apply({"params": params}, data)["features"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert extractor.count == 21
    # One trace for the whole stream, every batch split over the 8 data shards.
    assert traces == [(8, 4, 4)]
    assert len(shardings) == 3 and all(s.spec[0] == ("data", "fsdp") and len(s.device_set) == 8 for s in shardings)


def test_streaming_statistics_equal_whole_set(tiny):
    model, params = tiny
    extractor = extract.FeatureExtractor(lambda p, x: model.apply({"params": p}, x), params,
                                         make_mesh({"data": -1, "fsdp": 1}), batch_size=16)
    data = np.random.default_rng(1).standard_normal((50, 4, 4)).astype(np.float32)
    running = frechet.RunningStatistics()
    for out in extractor.stream(extract.batched(iter(data), 16)):
        running.add(out["features"])
    whole = frechet.statistics_of(np.asarray(model.apply({"params": params}, data)["features"]))
    np.testing.assert_allclose(running.result().sigma, whole.sigma, rtol=1e-4, atol=1e-6)


def test_batch_that_does_not_divide_the_mesh_is_refused(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="multiple of 8"):
        extract.FeatureExtractor(lambda p, x: model.apply({"params": p}, x), params,
                                 make_mesh({"data": -1, "fsdp": 1}), 12)
