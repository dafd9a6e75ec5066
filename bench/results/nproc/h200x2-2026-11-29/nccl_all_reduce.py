# all-reduce of LoRA-sized fp32 gradients (Qwen 0.5B r=64: 35M parameters), one process a GPU
import os, time, torch, torch.distributed as dist
dist.init_process_group("nccl"); rank = dist.get_rank(); torch.cuda.set_device(rank)
for n in (35_192_832, 8_000_000):
    x = torch.ones(n, device="cuda")
    for _ in range(3): dist.all_reduce(x)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): dist.all_reduce(x)
    torch.cuda.synchronize(); ms = (time.perf_counter() - t) / 10 * 1e3
    if rank == 0: print(f"all_reduce {n*4/1e6:.0f} MB fp32: {ms:.2f} ms, bus {2*n*4/2/ms/1e6:.1f} GB/s")
dist.destroy_process_group()
