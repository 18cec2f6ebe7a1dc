"""CPU probe behind a row of benchmarks/cpu_profile.md (formulations tried); run from the repo root as
`python -m benchmarks.probes.NAME [args]`. Prints medians; a measurement script, not library code."""
import time, torch, torch.nn.functional as F
from benchmarks.torch_reference import MNISTNet
m = MNISTNet(); opt = torch.optim.SGD(m.parameters(), lr=0.01)
x = torch.randn(32,1,28,28); y = torch.zeros(32, dtype=torch.long)
def step():
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
for _ in range(5): step()
ts=[]; cs=[]
for _ in range(30):
    t=time.perf_counter(); c=time.process_time(); step(); ts.append(time.perf_counter()-t); cs.append(time.process_time()-c)
print("torch threads", torch.get_num_threads(), "step ms", sorted(ts)[15]*1000, "cpu ms", sorted(cs)[15]*1000)
