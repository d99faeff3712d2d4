#!/usr/bin/env bash
# The one GPU check: the gpu-marked tests, then bench/gpu_step.py (ours against plain transformers + peft),
# each bounded so the whole run ends within 8 minutes on one H100. Results: bench/results/gpu_*.json
# (or $OUT/gpu_*.json), each naming the card.
#
#   bench/gpu_suite.sh prepare   # on a networked machine: fills bench/gpu_carry (git-ignored)
#   bench/gpu_suite.sh           # on the GPU machine, with bench/gpu_carry carried along
#
# What travels (bench/README.md#gpu-check): the GPU machine has torch (CUDA), transformers, peft, numpy and
# pytest but no network, so `prepare` downloads the cp312 wheels of what our package imports beyond those
# (pydantic and its core, annotated-types, typing-inspection, pyyaml: 3 MB; bitsandbytes for the CUDA QLoRA
# test: 43 MB; liger-kernel: 1 MB), plus the builtin model's tokenizer and config (4 MB; the tests build tiny random models around
# that tokenizer, no weights travel). With the repository (2.3 MB) that is about 52 MB of the 64 MiB a call takes.
# Without a GPU the pytest step skips every test and gpu_step.py refuses to run: the script says so and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=bench/gpu_carry
RESULTS=${OUT:-bench/results}
PYTHON=${PYTHON:-python}
WHEELS=(pydantic pydantic-core annotated-types typing-inspection pyyaml bitsandbytes)  # at the versions of .venv
GPU_WHEELS=(liger-kernel==0.8.5)  # the `gpu` extra: not installable here (it needs triton)

prepare() {
    local builtin
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/cache/models"
    mapfile -t pinned < <(.venv/bin/python -c 'import sys; from importlib.metadata import version
for name in sys.argv[1:]: print(f"{name}=={version(name)}")' "${WHEELS[@]}")
    .venv/bin/pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 \
        --dest "$CARRY/wheels" "${pinned[@]}" "${GPU_WHEELS[@]}"
    builtin=$(.venv/bin/python -c 'from raytune_ft.models import resolve_model_source as r; print(r("builtin:smollm2-135m-instruct"))')
    mkdir -p "$CARRY/cache/models/smollm2-135m-instruct"
    cp "$builtin"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} \
        "$CARRY/cache/models/smollm2-135m-instruct/"
    du -sh "$CARRY"
}

run() {
    local status=0 started=$SECONDS
    mkdir -p "$RESULTS"
    if ! "$PYTHON" -c "import pydantic, yaml, bitsandbytes, liger_kernel" 2>/dev/null && compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps "$CARRY"/wheels/*.whl
    fi
    export RAYTUNE_FT_CACHE=$PWD/$CARRY/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
    "$PYTHON" - "$RESULTS/gpu_card.json" <<'EOF'
import json, subprocess, sys, torch, transformers, peft
card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip() if card else None
json.dump({"card": card, "nvidia_smi": smi, "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "peft": peft.__version__}, open(sys.argv[1], "w"), indent=1)
print("card:", card)
EOF
    # Only the modules holding gpu-marked tests: the rest import Ray, which the GPU machine does not have.
    mapfile -t files < <(grep -l "mark.gpu" tests/unit/*.py)
    timeout 240 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -rs "${files[@]}" \
        --junitxml="$RESULTS/gpu_pytest.xml" || status=$?
    "$PYTHON" - "$RESULTS/gpu_pytest.xml" "$RESULTS/gpu_pytest.json" "$status" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
cases = []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
    cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                  "seconds": float(case.get("time", 0))})
json.dump({"exit_status": int(sys.argv[3]), "cases": cases}, open(sys.argv[2], "w"), indent=1)
EOF
    timeout 300 "$PYTHON" bench/gpu_step.py --out "$RESULTS/gpu_step.json" || status=$?
    echo "gpu_suite: $((SECONDS - started)) s, exit status $status; results in $RESULTS/gpu_*.json"
    return "$status"
}

case "${1:-run}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bench/gpu_suite.sh [prepare|run]" >&2; exit 2 ;;
esac
