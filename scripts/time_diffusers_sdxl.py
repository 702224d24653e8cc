"""diffusers' StableDiffusionXLPipeline on the `sdxl-arch` built-in (fp32, random weights), alone in its process:
time per U-Net call and the process's peak memory, for the README's SDXL row (`sdrt bench --backends torch` on
sdxl-arch is killed for memory here, see the README).

    python scripts/time_diffusers_sdxl.py --size 512 --steps 2
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sdrt.export.sources import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    pipe = load_model("sdxl-arch").pipe
    pipe.set_progress_bar_config(disable=True)
    times, forward = [], pipe.unet.forward

    def timed(*a, **k):
        t = time.perf_counter()
        out = forward(*a, **k)
        times.append(time.perf_counter() - t)
        return out

    pipe.unet.forward = timed
    t0 = time.perf_counter()
    with torch.no_grad():
        pipe("a red circle on a blue background", negative_prompt="blurry", num_inference_steps=args.steps,
             guidance_scale=7.5, height=args.size, width=args.size, generator=torch.Generator().manual_seed(1),
             output_type="np")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"end to end {time.perf_counter() - t0:.2f} s; U-Net calls {', '.join(f'{t:.2f}' for t in times)} s; "
          f"peak {peak:.2f} GB")


if __name__ == "__main__":
    main()
