# seagrid: experiment grids for token-level vision-language alignment.

# Show the recipes.
default:
    @just --list

# Install everything from the committed uv.lock into .venv.
setup:
    uv sync --frozen --quiet

# Run every trial of SPEC that is not done yet (e.g. just grid experiments/smoke.yaml; --verbose shows Ray's output).
grid SPEC *ARGS: setup
    uv run --frozen --quiet seagrid grid {{SPEC}} {{ARGS}}

# Run (or resume) the Ray Tune search of SPEC's `search:` block, one per grid cell (e.g. just tune experiments/search_sea.yaml).
tune SPEC *ARGS: setup
    uv run --frozen --quiet seagrid tune {{SPEC}} {{ARGS}}

# Build (or reuse) the SEA label stores the trials of SPEC need, with a progress bar.
labels SPEC *ARGS: setup
    uv run --frozen --quiet seagrid labels {{SPEC}} {{ARGS}}

# Check the data SPEC needs is under data/ (counts, sizes, images decode) and say what to put where (--download fetches hub datasets).
data SPEC *ARGS: setup
    uv run --frozen --quiet seagrid data {{SPEC}} {{ARGS}}

# Print the trials of SPEC with their status, resources, estimates and ids; runs nothing (--format table|json|csv).
plan SPEC *ARGS: setup
    uv run --frozen --quiet seagrid plan {{SPEC}} {{ARGS}}

# Paper-style tables and plots of SPEC's runs under <output.root>/reports/ (e.g. just report SPEC --rows method.name,model.encoder --columns eval/pope,diag/tacs).
report SPEC *ARGS: setup
    uv run --frozen --quiet seagrid report {{SPEC}} {{ARGS}}

# Export finished trials of SPEC as transformers LLaVA checkpoints under <output.root>/exports/ (--trial, --stage, --out, --push REPO_ID).
export SPEC *ARGS: setup
    uv run --frozen --quiet seagrid export {{SPEC}} {{ARGS}}

# lmms-eval (optional extra, installed here) on every finished trial's export, e.g. just lmms SPEC --tasks pope; metrics to MLflow as lmms/<task>/<metric>.
lmms SPEC *ARGS:
    uv sync --frozen --quiet --extra lmms
    uv run --frozen --quiet --extra lmms seagrid lmms {{SPEC}} {{ARGS}}

# A tracking server for several grids at once (specs: output.tracking_uri: http://HOST:PORT); BACKEND can be
# postgresql://USER:PASSWORD@HOST/DB (README: MLflow). Binds 127.0.0.1 unless HOST says otherwise.
mlflow-server BACKEND="sqlite:///mlflow/mlflow.db" ARTIFACTS="mlflow/artifacts" PORT="5000" HOST="127.0.0.1": setup
    mkdir -p mlflow {{ARTIFACTS}}
    uv run --frozen --quiet mlflow server --backend-store-uri {{BACKEND}} --artifacts-destination {{ARTIFACTS}} --host {{HOST}} --port {{PORT}} --workers 4

# Serve the MLflow UI of the default local store on 127.0.0.1 only (just mlflow 5000 0.0.0.0 opens it to the network).
mlflow PORT="5000" HOST="127.0.0.1": setup
    mkdir -p mlflow/artifacts
    uv run --frozen --quiet mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --default-artifact-root ./mlflow/artifacts --host {{HOST}} --port {{PORT}}

# Benchmarks (not tests; BENCHMARKS.md): stage-1/2 step time, samples/s and MFU, then SEA's and BASIC's overhead.
bench: setup
    uv run --frozen --quiet python bench/stage_bench.py --threads 1
    uv run --frozen --quiet python bench/sea_bench.py
    uv run --frozen --quiet python bench/basic_bench.py --threads 1

# The GPU check (one H100/H200-class GPU, under 8 minutes, nothing downloaded): full-size random vicuna-7b +
# clip-l-336 through the real trainer; prints the table and BENCHMARKS.md rows (--tiny: tiny models on a CPU).
gpu-check *ARGS: setup
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 uv run --frozen --quiet python bench/gpu_check.py {{ARGS}}

# One benchmark with its own options, e.g. just bench-one stage_bench --llm vicuna-7b --encoder clip-l-336.
bench-one NAME *ARGS: setup
    uv run --frozen --quiet python bench/{{NAME}}.py {{ARGS}}

# The test suite, offline (an accidental hub download fails at once), with the lmms extra so its test runs.
test:
    uv sync --frozen --quiet --extra lmms
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 uv run --frozen --quiet --extra lmms pytest -q

# The fast tier for the inner loop: every test that starts no TorchTrainer and is not marked slow (under 3 minutes).
test-fast: setup
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 uv run --frozen --quiet pytest -q --fast

# ruff lint and format check, then mypy over core/ and grid/ (pyproject's [tool.mypy]).
lint: setup
    uv run --frozen --quiet ruff check .
    uv run --frozen --quiet ruff format --check .
    uv run --frozen --quiet mypy

# Cluster-scale scheduling benchmark (not a test): 1,000 mixed trials as GPU gangs on a simulated 256-GPU cluster.
bench-cluster *ARGS: setup
    uv run --frozen --quiet python bench/cluster_sim.py {{ARGS}}
