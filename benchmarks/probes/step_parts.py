"""CPU probe behind a row of benchmarks/cpu_profile.md (formulations tried); run from the repo root as
`python -m benchmarks.probes.NAME [args]`. Prints medians; a measurement script, not library code."""
import time, sys
import jax, jax.numpy as jnp, numpy as np, optax
from flash_jax.models import get_model, init_variables
from flash_jax.models.layers import max_pool, Conv
B = 32
def timeit(f, *a, n=20):
    jax.block_until_ready(f(*a)); ts=[]; cs=[]
    for _ in range(n):
        t=time.perf_counter(); c=time.process_time(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t); cs.append(time.process_time()-c)
    return round(1000*sorted(ts)[len(ts)//2],2), round(1000*sorted(cs)[len(cs)//2],2)
x = jax.random.normal(jax.random.PRNGKey(1), (B, 28, 28, 1))
y = jnp.zeros((B,), jnp.int32)
for impl in ("slices", "xla"):
    model = get_model("mnistnet", 10, impl)
    p = init_variables(model, jax.random.PRNGKey(0), (28,28,1))["params"]
    loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(model.module.apply({"params": p}, x, train=True), y).mean()
    print(impl, "fwd ms", timeit(jax.jit(loss), p, x, y), "fwd+bwd ms", timeit(jax.jit(jax.grad(loss)), p, x, y))
# pieces
h1 = jax.random.normal(jax.random.PRNGKey(2), (B, 24, 24, 10))
h2 = jax.random.normal(jax.random.PRNGKey(3), (B, 18, 18, 20))
pool_g = jax.jit(jax.grad(lambda h: jnp.sum(max_pool(h, 3, 1)**2)))
print("pool1 fwd+bwd", timeit(pool_g, h1), "pool2 fwd+bwd", timeit(pool_g, h2))
for impl in ("slices", "xla"):
    c = Conv(20, 5, padding="VALID", impl=impl)
    inp = jax.random.normal(jax.random.PRNGKey(4), (B, 22, 22, 10))
    cp = c.init(jax.random.PRNGKey(0), inp)
    g = jax.jit(jax.grad(lambda cp, inp: jnp.sum(c.apply(cp, inp)**2), argnums=(0, 1)))
    print(impl, "conv2 fwd", timeit(jax.jit(c.apply), cp, inp), "fwd+bwd", timeit(g, cp, inp))
    c1 = Conv(10, 5, padding="VALID", impl=impl)
    cp1 = c1.init(jax.random.PRNGKey(0), x)
    g1 = jax.jit(jax.grad(lambda cp, inp: jnp.sum(c1.apply(cp, inp)**2)))
    print(impl, "conv1 fwd+bwd(w)", timeit(g1, cp1, x))
W = jax.random.normal(jax.random.PRNGKey(5), (5120, 50))
a = jax.random.normal(jax.random.PRNGKey(6), (B, 5120))
print("fc1 fwd+bwd", timeit(jax.jit(jax.grad(lambda W, a: jnp.sum(jnp.tanh(a @ W)), argnums=(0,1))), W, a))
