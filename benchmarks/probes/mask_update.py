"""CPU probe behind a row of benchmarks/cpu_profile.md (formulations tried); run from the repo root as
`python -m benchmarks.probes.NAME [args]`. Prints medians; a measurement script, not library code."""
import time, jax, jax.numpy as jnp
from flash_jax.sparse import mask_update, random_grow_scores, random_masks, sl_init
shapes = {"conv2/kernel": (5,5,10,20), "fc1/kernel": (5120, 50)}
m = random_masks(jax.random.PRNGKey(0), shapes, 0.05)
K=10
masks = jax.tree.map(lambda a: jnp.broadcast_to(a, (K,)+a.shape), m)
params = {p: jax.random.normal(jax.random.PRNGKey(1), (K,)+s) for p, s in shapes.items()}
target = jnp.full((K,), 0.05*(5000+256000))
f = jax.jit(jax.vmap(lambda k, p, m, t: mask_update(p, m, 0.2, t, sl_init(), random_grow_scores(k, m))[0]))
keys = jax.random.split(jax.random.PRNGKey(2), K)
jax.block_until_ready(f(keys, params, masks, target))
ts=[]
for _ in range(10):
    t=time.perf_counter(); jax.block_until_ready(f(keys, params, masks, target)); ts.append(time.perf_counter()-t)
print("vmapped mask_update x10 clients ms", sorted(ts)[5]*1000)
