"""rda on sharded parameters: the update runs where the shards are.

Runs in a subprocess because the number of simulated CPU devices is fixed
when JAX starts.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import rda_optax
    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    params = {"w": jax.random.normal(jax.random.key(0), (64, 32)),
              "b": jnp.ones(32)}
    grads = jax.tree.map(lambda p: 0.3 * jnp.sin(p), params)
    tx = optax.chain(rda_optax.rda(1.0, 0.2), rda_optax.freeze_zeros(1))

    def run(params, grads):
      state = tx.init(params)
      for _ in range(3):
        u, state = step(grads, state, params)
        params = optax.apply_updates(params, u)
      return params, state

    step = jax.jit(tx.update)
    ref_p, _ = run(params, grads)
    spec = {"w": NamedSharding(mesh, P("data", "model")),
            "b": NamedSharding(mesh, P("model"))}
    sp = jax.device_put(params, spec)
    sg = jax.device_put(grads, spec)
    out_p, out_s = run(sp, sg)
    for k in params:
      np.testing.assert_allclose(out_p[k], ref_p[k], rtol=1e-6, atol=1e-7)
      assert out_p[k].sharding.is_equivalent_to(spec[k], out_p[k].ndim), k
      assert out_s[0].gbar[k].sharding.is_equivalent_to(spec[k], out_p[k].ndim)
    # The compiled update holds no collective: every op is shard-local.
    hlo = step.lower(sg, tx.init(sp), sp).compile().as_text()
    for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute"):
      assert op not in hlo, op
    print("ok", float(rda_optax.sparsity(out_p)))
""")


def test_rda_on_sharded_params_is_shard_local():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "PATH": "/usr/bin:/bin"}
  r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True,
                     text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.startswith("ok")
