"""Compile every Pallas kernel of the project for sm_90 on this machine and print what it costs.

For each case of `pallas_kernels.catalog` (each kernel in each configuration the code uses, at
small and at realistic shapes) the program is lowered for CUDA, each Triton module is verified
(exact: what XLA meets on a GPU), compiled by the `triton` package for `cuda:90` and assembled by
its ptxas. The table lists block sizes, warps, stages, shared memory, registers and spills. XLA
compiles with its own bundled Triton, so smem / register figures are estimates.

    python -m experiments.kernel_report [--family small|realistic|all] [--json PATH]

Exit status 1 when a kernel fails to verify or compile, spills, or needs more than 227 KB of
shared memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pallas_kernels import catalog, gpu_check


def report_rows(family: str = "all") -> list[dict]:
    """One row per Triton kernel of every case: kernel, case, tiling, launch, smem, registers,
    spills, whether it compiled, and the problems found (empty when fine)."""
    rows = []
    for case in catalog.kernel_cases(family):
        for kernel in gpu_check.triton_kernels(case.lower("cuda")):
            row = {
                "case": case.name,
                "kernel": kernel.name,
                "block_sizes": case.block_sizes,
                "num_warps": kernel.num_warps,
                "num_stages": kernel.num_stages,
                "grid": list(kernel.grid),
                "verified": False,
                "compiled": False,
                "smem_bytes": None,
                "registers": None,
                "spill_bytes": None,
                "problems": [],
            }
            try:
                text = gpu_check.verify(kernel)
                row["verified"] = True
                stats = gpu_check.compile_sm90(kernel, text)
                row.update(compiled=True, smem_bytes=stats.smem_bytes,
                           registers=stats.registers, spill_bytes=stats.spill_bytes,
                           problems=stats.problems)
            except Exception as e:  # noqa: BLE001 - report every kernel, whatever fails
                row["problems"] = [f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"]
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Fixed-width table of `report_rows`."""
    head = ("case", "kernel", "warps", "stages", "smem KB", "regs", "spill B", "status")
    lines = [head]
    for r in rows:
        smem = "-" if r["smem_bytes"] is None else f"{r['smem_bytes'] / 1024:.0f}"
        status = "ok" if r["compiled"] and not r["problems"] else "; ".join(r["problems"])
        lines.append((r["case"], r["kernel"], str(r["num_warps"]), str(r["num_stages"]), smem,
                      str(r["registers"] if r["registers"] is not None else "-"),
                      str(r["spill_bytes"] if r["spill_bytes"] is not None else "-"), status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def main(argv=None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="all", choices=("small", "realistic", "all"),
                    help="which shape family of kernel cases to compile")
    ap.add_argument("--json", dest="json_path", default=None,
                    help="also write the rows as a JSON list to this path")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = report_rows(args.family)
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=1)
    cases = {r["case"]: r["block_sizes"] for r in rows}
    print("block sizes per case:")
    for name, tiles in cases.items():
        print(f"  {name}: {tiles}")
    print(format_table(rows))
    bad = [r for r in rows if not r["compiled"] or r["problems"]]
    print(f"{len(rows)} kernels, {len(rows) - len(bad)} ok, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
