"""The runtime never imports torch: not on import, not while generating."""

import subprocess
import sys
import textwrap


def test_generate_imports_no_torch(export_dir, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import sdrt, sdrt.runtime
        from sdrt import Pipeline
        with Pipeline.load({str(export_dir("tiny"))!r}) as pipe:
            result = pipe("a cat", num_inference_steps=3, height=64, width=64, seed=1)
        result.save({str(tmp_path / "a.png")!r})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
        print("HEAVY", heavy)
        assert not heavy, heavy
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
    assert (tmp_path / "a.png").is_file()


def test_cli_generate_writes_png_with_parameters(export_dir, tmp_path):
    from sdrt.runtime.images import read_parameters

    out = tmp_path / "img.png"
    proc = subprocess.run(
        [sys.executable, "-m", "sdrt.cli", "generate", str(export_dir("tiny")), "--prompt", "a blue square",
         "--negative-prompt", "red", "--steps", "3", "--seed", "7", "--width", "96", "--height", "64",
         "--sampler", "ddim", "--batch", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        params = read_parameters(tmp_path / f"img-{i}.png")
        assert params.startswith("a blue square\nNegative prompt: red\nSteps: 3, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 96x64")
    assert "onnxruntime on CPUExecutionProvider" in proc.stdout
