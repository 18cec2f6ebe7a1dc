"""CPU probe behind a row of benchmarks/cpu_profile.md (formulations tried); run from the repo root as
`python -m benchmarks.probes.NAME [args]`. Prints medians; a measurement script, not library code."""
import time, functools, jax, jax.numpy as jnp, optax
from jax import lax
from flash_jax.models import get_model, init_variables
from flash_jax.models.layers import _first_max_gradient
B=32
def timeit(f, *a, n=20):
    jax.block_until_ready(f(*a)); ts=[]; cs=[]
    for _ in range(n):
        t=time.perf_counter(); c=time.process_time(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t); cs.append(time.process_time()-c)
    return round(1000*sorted(ts)[n//2],2), round(1000*sorted(cs)[n//2],2)

def conv_cm(x, k):  # x (C,B,H,W), k HWIO
    kh, kw, ci, co = k.shape
    C, Bn, H, W = x.shape
    oh, ow = H-kh+1, W-kw+1
    patches = jnp.stack([x[:, :, i:i+oh, j:j+ow] for i in range(kh) for j in range(kw)], 0)  # (kh*kw, C, B, oh, ow)
    patches = patches.reshape(kh*kw*C, Bn*oh*ow)
    wm = k.reshape(kh*kw*ci, co).T  # (co, kh*kw*ci) rows ordered (i,j,c)
    return (wm @ patches).reshape(co, Bn, oh, ow)

def pool_cm(x):  # 3x3 stride 1 valid on the last two dims
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,1,3,3), (1,1,1,1), "VALID")

def pool_sep(x):
    r = jnp.maximum(jnp.maximum(x[..., 0:-2, :], x[..., 1:-1, :]), x[..., 2:, :])
    return jnp.maximum(jnp.maximum(r[..., 0:-2], r[..., 1:-1]), r[..., 2:])

def net(p, x, pool):
    x = jnp.transpose(x, (3,0,1,2))
    x = jax.nn.relu(conv_cm(x, p["conv1"]["kernel"]) + p["conv1"]["bias"][:, None, None, None])
    x = pool(x)
    x = jax.nn.relu(conv_cm(x, p["conv2"]["kernel"]) + p["conv2"]["bias"][:, None, None, None])
    x = pool(x)
    x = jnp.transpose(x, (1,2,3,0)).reshape(x.shape[1], -1)
    x = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return x @ p["fc2"]["kernel"] + p["fc2"]["bias"]

x = jax.random.normal(jax.random.PRNGKey(1), (B, 28, 28, 1)); y = jnp.zeros((B,), jnp.int32)
model = get_model("mnistnet", 10, "slices")
p = init_variables(model, jax.random.PRNGKey(0), (28,28,1))["params"]
ref = lambda p, x: model.module.apply({"params": p}, x, train=True)
for name, f in [("flax slices", ref), ("cm reduce_window", lambda p, x: net(p, x, pool_cm)), ("cm separable pool", lambda p, x: net(p, x, pool_sep))]:
    loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(f(p, x), y).mean()
    print(name, "fwd", timeit(jax.jit(loss), p, x, y), "fwd+bwd", timeit(jax.jit(jax.grad(loss)), p, x, y), "maxdiff", float(jnp.abs(f(p,x)-ref(p,x)).max()))
