"""CPU probe behind a row of benchmarks/cpu_profile.md (formulations tried); run from the repo root as
`python -m benchmarks.probes.NAME [args]`. Prints medians; a measurement script, not library code."""
import time, sys, functools
import jax, jax.numpy as jnp, numpy as np, optax
from flash_jax.models import get_model, init_variables
K, B, T = 10, 32, 6
impl = sys.argv[1] if len(sys.argv) > 1 else "slices"
model = get_model("mnistnet", 10, impl)
v = init_variables(model, jax.random.PRNGKey(0), (28,28,1))
params = jax.tree.map(lambda a: jnp.broadcast_to(a, (K,)+a.shape), v["params"])
x = jax.random.normal(jax.random.PRNGKey(1), (T, K, B, 28, 28, 1))
y = jnp.zeros((T, K, B), jnp.int32)
def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.module.apply({"params": p}, x, train=True), y).mean()
def step(p, x, y):
    g = jax.grad(loss)(p, x, y)
    return jax.tree.map(lambda a, b: a - 0.01*b, p, g)
vstep = jax.jit(jax.vmap(step))
def timeit(f, *a, n=3):
    jax.block_until_ready(f(*a)); ts=[]
    for _ in range(n):
        t=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t)
    return sorted(ts)[len(ts)//2]
def loop(p):
    for t in range(T): p = vstep(p, x[t], y[t])
    return p
print(impl, "python loop of vmapped steps", timeit(loop, params))
for unroll in (1, T):
    f = jax.jit(lambda p: jax.lax.scan(lambda p, xy: (jax.vmap(step)(p, *xy), None), p, (x, y), unroll=unroll)[0])
    print(impl, "scan unroll", unroll, timeit(f, params))
p1 = v["params"]
sstep = jax.jit(step)
def seq(p):
    out = []
    for k in range(K):
        q = p
        for t in range(T): q = sstep(q, x[t, k], y[t, k])
        out.append(q)
    return out
print(impl, "sequential clients, jitted step", timeit(seq, p1))
