#!/usr/bin/env bash
# The pending GPU measurements of issues 20 and 21, as one device call runs them (device/METHOD.md: the device has
# Python 3.12 and torch; everything else comes from wheels carried in a git-ignored folder).
#
#   bash bench/run_on_device.sh subject WHEELS SCENE_PARENT   # issue 20A: subject alpha IoU, subject-only fps,
#                                                             # "a red face" redness (~9 min)
#   bash bench/run_on_device.sh shape WHEELS SCENE_PARENT     # issue 20B: "a big hat" at the maximum shape freedom,
#                                                             # 400 iterations (~8 min: 330 s was too short on
#                                                             # 2026-12-07, 91 s of it the reconstruction)
#   bash bench/run_on_device.sh detection WHEELS SCENE_PARENT # issue 20A: subject alpha of two trainings, images and
#                                                             # checkpoints kept (~6 min)
#   bash bench/run_on_device.sh scaleout WHEELS SCENE_PARENT  # issue 21: jobs/hour with 1 and 2 Ray workers (~6 min)
#   bash bench/run_on_device.sh issue20 WHEELS SCENE_PARENT   # issue 20A in one call on ONE training: subject alpha
#                                                             # and fps, then "a red face" (~8 min)
#   bash bench/run_on_device.sh iou WHEELS SCENE_PARENT       # issue20's subject alpha and fps alone (~4 min)
#   bash bench/run_on_device.sh shape-from WHEELS SCENE_PARENT CK  # `shape` on a brought-back reconstruction (~4 min)
#   bash bench/run_on_device.sh step WHEELS SCENE_PARENT      # issue 22: uniform vs cone steps, PSNR and ms/frame
#                                                             # (~5 min)
#   bash bench/run_on_device.sh hash WHEELS SCENE_PARENT      # issue 22: the hash backward per run vs per point:
#                                                             # GPU tests, micro-benchmark, stylize profile (~5 min)
#
# WHEELS: cp312 manylinux wheels of open_clip_torch, lpips, pyzmq and their pure-Python dependencies (and, for
# scaleout, ray==2.60.0 with msgpack, protobuf, requests); SCENE_PARENT: a folder holding fangzhou_nature. Results
# go to $OUT (the device's return folder) or bench/results.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:?subject, detection, shape, shape-from, issue20, iou, step, hash or scaleout} wheels=${2:?wheel folder} scene=${3:?folder holding fangzhou_nature}
out=${OUT:-bench/results}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 -m pip install -q --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
export NERFART_COMMIT=$commit
case $what in
    subject)
        # The subject's alpha and render speed (the add-on's default photo scale), then "a red face" without and
        # with the seen air in the subject, on one training of their own.
        timeout 280 python3 bench/bench_subject.py --data "$scene" --skip-matted --commit "$commit" \
            --save-images "$out/subject_images" --out "$out/subject.md" 2>&1 | grep -v Warning | tail -12
        timeout 300 python3 bench/bench_subject_stylize.py --data "$scene" --runs bounds,bounds_air \
            --commit "$commit" --out "$out/subject_stylize.md" 2>&1 | grep -v Warning | tail -20 ;;
    shape)
        # The reconstruction is kept too (float16, in 15 MB pieces: `cat ck.pt.* > ck.pt`) for scoring subject
        # detections on the CPU (bench/subject_iou_cpu.py).
        timeout 480 python3 bench/sweep_shape.py --data "$scene" --no-mattes --iterations 400 --grid "0.5:d:s" \
            --save-checkpoint /tmp/rec_shape.pt --commit "$commit" --out "$out/sweep_shape_400.md" 2>&1 \
            | grep -v Warning | tail -12
        python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from bench.bench_subject import \
save_halved; save_halved(Path('/tmp/rec_shape.pt'), Path('/tmp/ck.pt'))" && split -b 15M -d /tmp/ck.pt "$out/ck.pt." ;;
    shape-from)
        # `shape` on a reconstruction brought back by an earlier `shape` (4th argument; no training: a short lease,
        # and the same F_rec before and after a change).
        ck=${4:?a reconstruction checkpoint}
        timeout 420 python3 bench/sweep_shape.py --data "$scene" --no-mattes --checkpoint "$ck" --iterations 400 \
            --grid "0.5:d:s" --commit "$commit" --save-images "$out" --out "$out/sweep_shape_400.md" 2>&1 \
            | grep -v Warning | tail -12 ;;
    detection)
        # The subject alpha of two trainings (the add-on's default photo scale 1, and 0.5), each with its per-view
        # images and its checkpoint (float16) for scoring other detections on the CPU (bench/subject_iou_cpu.py).
        for scale in 1 0.5; do
            timeout 280 python3 bench/bench_subject.py --data "$scene" --skip-matted --scale $scale --frames 20 \
                --commit "$commit" --save-images "$out/detect_images_$scale" --save-checkpoint "$out/ck_$scale.pt" \
                --out "$out/subject_scale$scale.md" 2>&1 | grep -v Warning | tail -8
        done ;;
    issue20)
        # One reconstruction for both (the add-on's default photo scale; the stylization loads its float16 copy), each
        # cut short by its own limit rather than losing the other. "a big hat" does not fit beside them in one call
        # (the 400 iterations and their evaluation took over 150 s after loading): run `shape` on its own.
        # The reconstruction comes back too (float16, in 15 MB pieces: `cat ck.pt.* > ck.pt`) for scoring other
        # detections on the CPU (bench/subject_iou_cpu.py), with one held-out view's strip image.
        timeout 250 python3 bench/bench_subject.py --data "$scene" --skip-matted --commit "$commit" \
            --save-images /tmp/subject_images --save-checkpoint /tmp/rec_unmatted.pt \
            --out "$out/subject.md" 2>&1 | grep -v Warning | tail -12
        cp /tmp/subject_images/*000021* "$out/" 2>/dev/null
        timeout 170 python3 bench/bench_subject_stylize.py --data "$scene" --checkpoint /tmp/rec_unmatted.pt \
            --runs bounds --commit "$commit" --out "$out/subject_stylize.md" 2>&1 | grep -v Warning | tail -12
        split -b 15M -d /tmp/rec_unmatted.pt "$out/ck.pt." ;;
    iou)
        # issue20's first half alone (subject alpha and fps, 20-frame turntables), for a short device lease; the
        # reconstruction comes back as in issue20.
        timeout 250 python3 bench/bench_subject.py --data "$scene" --skip-matted --frames 20 --commit "$commit" \
            --save-images /tmp/subject_images --save-checkpoint /tmp/rec_unmatted.pt \
            --out "$out/subject.md" 2>&1 | grep -v Warning | tail -12
        cp /tmp/subject_images/*000021* "$out/" 2>/dev/null
        split -b 15M -d /tmp/rec_unmatted.pt "$out/ck.pt." ;;
    step)
        # Issue 22: samples per ray against held-out PSNR and frame time, uniform steps (the matte default) against
        # cone stepping (1/256, the no-mattes default), one 60 s training each (~5 min).
        timeout 560 python3 bench/bench_march_step.py --data "$scene" --commit "$commit" \
            --out "$out/march_step.md" 2>&1 | grep -v Warning | tail -8 ;;
    hash)
        # Issue 22: the hash grid's backward with one atomic per run of samples, checked against the per-point one
        # on the GPU (tests), its micro-benchmark, and stylize iterations with each (~5 min).
        timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_nerf_triton.py 2>&1 | tail -3
        timeout 120 python3 bench/bench_hash_backward.py --commit "$commit" --out "$out/hash_backward.md" 2>&1 \
            | grep -v Warning | tail -5
        timeout 260 python3 bench/profile_stylize.py --data "$scene" --encoders standin --tf32 off \
            --hash-backward atomic,runs --commit "$commit" --out "$out/stylize_profile_runs.md" 2>&1 \
            | grep -v Warning | tail -22 ;;
    scaleout)
        timeout 560 python3 bench/bench_scaleout.py --capture "$scene/fangzhou_nature" --workers 1,2 \
            --commit "$commit" --out "$out/scaleout.md" 2>&1 | grep -v Warning | tail -30 ;;
    *) echo "unknown measurement $what (subject, detection, shape, shape-from, issue20, iou, step, hash or scaleout)" >&2; exit 2 ;;
esac
