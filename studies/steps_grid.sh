#!/usr/bin/env bash
# The sampler grid on a finished run's networks (docs/sampler.md; each design's history in
# CHANGELOG.md): steps x corrections x solver x guidance x Langevin time for pixel, latent-none
# and latent-both in the ideal and sparse cases, 4 members x 8 days. Resumable (steps.py
# --resume): run it again after a stop and it measures only what is missing.
#   studies/steps_grid.sh results/study results/study/steps [JOBS]
# JOBS (default 2): processes side by side, one thread each. PERIOD="FIRST LAST" (default the
# study's first 8 test days); PYTHON (default python); METHODS="a b" runs only those methods'
# grids, one after another, and stops. DESIGN selects another design:
# - band: the corrector at <= 64 calls (corrections only where sigma >= 0.3, the Langevin time
#   fixed, more corrections per step), without the paper's 512 + 1;
# - seeds: the candidates for a sampler per network (assimilation.sampler_by_space) at <= 64
#   calls over seeds 0, 1 and 2 (PERIOD="2007-01-01 2007-01-16": 4 observed days in the ideal
#   case);
# - safe: the corrector as the steps grow (16, 64, 256; 2 corrections where sigma >= 0.3 at the
#   Langevin time of 40 steps and of 16), its corrections on a 16-step grid
#   (correction_grid_steps) and, at 40, after every step;
# - final: the candidates within reach of the rule over seeds 0-5, the choice of config.yaml's
#   samplers (studies/sampler/final-choice).
# Then, for the table and figure:
#   python studies/steps.py --from-csv OUT/*.csv --plot OUT/steps.png
set -euo pipefail
run=${1:?usage: steps_grid.sh RUN OUT [JOBS]}
out=${2:?usage: steps_grid.sh RUN OUT [JOBS]}
jobs=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}
mkdir -p "$out"
read -r first last <<< "${PERIOD:-2007-01-01 2007-01-08}"  # the study's first 8 test days
common=(--cases ideal sparse --members 4 --period "$first" "$last" --resume)
band() {  # the corrector's design: one CSV per method
    local method=$1 m=(--methods "$1") csv=(--csv "$out/$1-band.csv")
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 16 32 --corrections 0 "${csv[@]}"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 32 --corrections 1 --tau-reference-steps 16 "${csv[@]}"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 32 --corrections 1 --correction-min-sigma 0.3 --tau-reference-steps 64 "${csv[@]}"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 16 --corrections 2 3 --correction-min-sigma 0.3 --tau-reference-steps 16 32 \
        "${csv[@]}"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 8 --corrections 7 --correction-min-sigma 0.3 --tau-reference-steps 16 "${csv[@]}"
}
seeds() {  # the candidates for a sampler per network, over three seeds: one CSV per method
    local m=(--methods "$1") csv=(--csv "$out/$1-seeds.csv") s=(--seeds 0 1 2)
    local sda=(--guidance sda "${s[@]}" "${csv[@]}")
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim "${sda[@]}" \
        --steps 32 --corrections 0
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim "${sda[@]}" \
        --steps 16 32 --corrections 1 --tau-reference-steps 16
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim "${sda[@]}" \
        --steps 16 --corrections 2 3 --correction-min-sigma 0.3 --tau-reference-steps 16
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim "${sda[@]}" \
        --steps 16 --corrections 2 --correction-min-sigma 0.3 --tau-reference-steps 32
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim "${sda[@]}" \
        --steps 8 --corrections 7 --correction-min-sigma 0.3 --tau-reference-steps 16
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers dpm2m "${sda[@]}" \
        --steps 32 --corrections 1 --tau-reference-steps 16
    # the third round: the second order and less Langevin time, for spread
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers dpm2m "${sda[@]}" \
        --steps 16 32 --corrections 0
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim "${sda[@]}" \
        --steps 64 --corrections 0
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers dpm2m "${sda[@]}" \
        --steps 16 --corrections 1 --tau-reference-steps 4 8 16
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers dpm2m "${sda[@]}" \
        --steps 32 --corrections 1 --tau-reference-steps 4 8
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim "${sda[@]}" \
        --steps 16 --corrections 1 --tau-reference-steps 8
}
safe() {  # the corrector as the steps grow: its corrections on a 16-step grid, or after every step
    local m=(--methods "$1") csv=(--csv "$out/$1-safe.csv")
    local sda=(--solvers ddim --guidance sda --corrections 2 --correction-min-sigma 0.3)
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${sda[@]}" --steps 16 64 256 \
        --tau-reference-steps 40 16 --correction-grid-steps 16 "${csv[@]}"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${sda[@]}" --steps 16 64 256 \
        --tau-reference-steps 40 --correction-grid-steps 0 "${csv[@]}"
}
final() {  # the candidates within reach of the rule, over six seeds: one CSV per method
    local m=(--methods "$1") s=(--guidance sda --seeds 0 1 2 3 4 5 --csv "$out/$1-final.csv")
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${s[@]}" --solvers ddim \
        --steps 32 --corrections 0
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${s[@]}" --solvers ddim \
        --steps 16 --corrections 1 --tau-reference-steps 8 16
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${s[@]}" --solvers dpm2m \
        --steps 16 --corrections 1 --tau-reference-steps 4 8
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${s[@]}" --solvers dpm2m \
        --steps 32 --corrections 1 --tau-reference-steps 8
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${s[@]}" --solvers ddim \
        --steps 16 --corrections 2 --correction-min-sigma 0.3 --tau-reference-steps 8 12 16
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" "${s[@]}" --solvers dpm2m \
        --steps 16 --corrections 2 --correction-min-sigma 0.3 --tau-reference-steps 8
}
one() {  # one method's grid, one CSV per block of the design
    local method=$1 m=(--methods "$1")
    case ${DESIGN:-grid} in band | seeds | safe | final) "$DESIGN" "$method"; return ;; esac
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 8 16 32 64 128 256 --corrections 0 --csv "$out/$method-ddim-0.csv"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 8 16 32 64 128 --corrections 1 2 --max-calls 256 --tau-reference-steps 0 \
        --csv "$out/$method-ddim-tau.csv"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance sda \
        --steps 32 64 256 --corrections 1 --tau-reference-steps 16 32 \
        --csv "$out/$method-ddim-ref16.csv"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers dpm2m --guidance sda \
        --steps 8 16 32 64 --corrections 0 1 --max-calls 64 --tau-reference-steps 0 \
        --csv "$out/$method-dpm2m.csv"
    "$python" "$here/steps.py" "$run" "${m[@]}" "${common[@]}" --solvers ddim --guidance mmps \
        --steps 16 --corrections 0 1 --tau-reference-steps 0 --csv "$out/$method-mmps.csv"
}
if [ -n "${METHODS:-}" ]; then  # only these, one after another (e.g. to run a part early)
    for method in $METHODS; do one "$method"; done > "$out/grid-${METHODS// /-}.log" 2>&1
    exit 0
elif [ "$jobs" -ge 2 ]; then  # pixel costs about what the two latent methods cost together
    one pixel > "$out/grid-pixel.log" 2>&1 &
    { one latent-none; one latent-both; } > "$out/grid-latent.log" 2>&1 &
    wait
else
    for method in pixel latent-none latent-both; do one "$method"; done > "$out/grid.log" 2>&1
fi
# the paper's 512 + 1 and 256 + 1 on one method and case, for the cost comparison
case ${DESIGN:-grid} in band | seeds | safe | final) ;; *) "$python" "$here/steps.py" "$run" --methods latent-none \
    --cases ideal --members 4 --period "$first" "$last" --resume --solvers ddim --guidance sda \
    --steps 256 512 --corrections 1 --tau-reference-steps 0 --csv "$out/latent-none-paper.csv" \
    > "$out/grid-paper.log" 2>&1 ;;
esac
"$python" "$here/steps.py" --from-csv "$out"/*.csv --table --plot "$out/steps.png"
