"""One screen from the GPU check's figures file (`python tests/gpu/summary.py gpu_figures.json`): what ran,
every test's outcome, and the figures that answer issue 37's questions. Reads whatever the run wrote, however
far it got."""
import json
import sys
from pathlib import Path


def fmt(v) -> str:
    "A number in 3 significant digits, anything else as it is."
    return f'{v:.3g}' if isinstance(v, float) else str(v)


def line(label: str, d: dict) -> str:
    "`label: key value, key value, ...` on one line."
    return f"{label}: " + ', '.join(f'{k} {fmt(v)}' for k, v in d.items())


def summary(f: dict) -> list[str]:
    "The summary's lines."
    env, out = f.get('environment', {}), []
    out.append(f"== GPU check on {env.get('device', '?')}: torch {env.get('torch')}, CUDA {env.get('cuda')}, "
               f"GPUs {env.get('gpus')}, kernel {env.get('kernel')}")
    tests = f.get('tests', {})
    counts = {o: sum(t['outcome'] == o for t in tests.values()) for o in ('passed', 'failed', 'skipped')}
    out.append(line('tests', counts))
    for name, t in tests.items():
        first = t['detail'].splitlines()[0][:150] if t['detail'] else ''
        if t['outcome'] != 'passed': out.append(f"  {t['outcome'].upper()} {name}: {first}")
    if 'parity_float64' in f: out.append(line('parity float64, largest relative error', f['parity_float64']))
    if 'parity_over_processes' in f:
        p = f['parity_over_processes']
        out.append(line(f"parity on {p['world']} processes", p['errors']))
    if 'low_precision_relative_error' in f:
        low = f['low_precision_relative_error']
        for part in ('loss', 'gradients'):
            out.append(line(f'16-bit vs float64, {part}',
                            {k[:-len(part) - 1]: v for k, v in low.items() if k.endswith(' ' + part)}))
    if 'memory_and_speed' in f:
        m = f['memory_and_speed']
        out.append(f"memory and speed, n={m['n']}, d={m['d']} (floor: 3 GEMMs in the products' dtype):")
        out.append(f"  {'loss':<14}{'ms':>9}{'x floor':>9}{'peak GiB':>10}")
        out += [f"  {k:<14}{1e3 * r['seconds']:>9.1f}{r['over_floor']:>9.1f}{r['peak_bytes'] / 2**30:>10.2f}"
                for k, r in m['rows'].items()]
    for where, per_path in f.get('host_syncs_per_step', {}).items():
        out.append(line(f'host syncs per step, {where}', per_path))
    if 'torchrun' in f:
        r = f['torchrun']
        resumed = 'the same' if r['resumed'] == r['whole'] else [round(v, 3) for v in r['resumed']]
        bench = {k: r['bench'][k] for k in ('method', 'world_size', 'seconds', 'peak_bytes')}
        losses = [round(v, 3) for v in r['whole']]
        out.append(f"torchrun train on {r['world']}: losses {losses}, resumed {resumed}; "
                   + line('bench', bench))
    for key in (k for k in f if k.startswith('kernel_')):                       # tests/gpu/test_kernel.py's
        out.append(f"{key}: {json.dumps(f[key], default=str)[:200]}")
    if 'loss_curves' in f:
        curves = f['loss_curves']
        k = len(curves['cpu']) // 3
        last = {name: sum(h[-k:]) / k for name, h in curves.items()}
        out.append(line(f"{len(curves['cpu'])} training steps, mean of the last {k} losses", last))
    return out


if __name__ == '__main__':
    path = Path(sys.argv[1] if len(sys.argv) > 1 else 'gpu_figures.json')
    if not path.exists(): sys.exit(f'== GPU check: no figures at {path}: no test ended')
    print('\n'.join(summary(json.loads(path.read_text()))))
    print(f'== figures in {path}')
