# mpq: the user's entry points. Every target that needs Python sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# GPU=1 adds the gpu extra (CuPy and onnxruntime-gpu for CUDA 13): `make setup GPU=1`, `make bench-gpu`.
GPU    ?=
comma  := ,
EXTRAS := onboard,sim,warp,offboard,gym,cluster,dev,bench$(if $(filter 1,$(GPU)),$(comma)gpu)
STAMP  := $(VENV)/.mpq-installed$(if $(filter 1,$(GPU)),-gpu)
TASK   ?= pendulum
# BACKEND: the planner backend of `make sim` and `make plan`; unset, the profile's (sim) or the task's CPU one.
BACKEND ?=

.PHONY: setup test lint format bench bench-gpu demo reproduce sweep evaluate sim train plan firmware-headers standin deploy rollback pull-data robot-status clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
ifeq ($(GPU),1)
	@# onnxruntime and onnxruntime-gpu install the same module: the GPU build's files must be the ones left.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps 'onnxruntime-gpu>=1.31'
endif
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The suite on every core (pytest-xdist; a worker that runs out of tests takes queued ones from another),
# then the tests marked `timing` alone (realtime periods and watchdogs, which other tests would crowd).
test: lint
	$(BIN)/python -m pytest -n logical --dist worksteal -m "not timing"
	$(BIN)/python -m pytest -m timing

bench: setup
	$(BIN)/python -m offboard.bench $(if $(SECTIONS),--sections $(SECTIONS))

# The GPU backend against pytorch-mppi on CUDA (needs a CUDA GPU; sets up the gpu extra).
bench-gpu:
	$(MAKE) setup GPU=1
	$(BIN)/python -m offboard.bench_gpu

# The onboard loop against the local stand-in: `make sim TASK=pendulum EPISODES=5 MODE=realtime [BACKEND=mujoco]`.
EPISODES ?= 5
MODE ?= lockstep
sim: setup
	$(BIN)/python -m onboard run --robot sim --task $(TASK) --episodes $(EPISODES) --mode $(MODE) $(if $(BACKEND),--backend $(BACKEND))

# The main job: MPQ learning through the hardware-in-the-loop path, with the paper's baselines. RAY=auto (the Ray
# cluster running here) or RAY=host:port: every episode on a fleet of FLEET stand-ins, the targets on its workers.
RAY ?=
FLEET ?= 2
RAY_OPTIONS = $(if $(RAY),--ray $(RAY) --fleet $(FLEET))
demo: setup
	$(BIN)/python -m offboard.demo --task $(TASK) $(RAY_OPTIONS)

# The acceptance run (a script, not a test): 3 training seeds x 100 training episodes per learner, then every
# final Q and baseline on 50 new uniform starts and 50 episodes from the hanging start, and on a plant 30 % heavier (ROBUSTNESS: pole=1.3
# for the pendulum and the cart-pole, none for another task unless given).
# MPQ(lambda) runs beside MPQ for the pendulum; for the cart-pole its targets (Q on 10^5 rollout states per
# minibatch) would take about 3 hours of this run on 2 cores, so it is left out there (MPQ_LAMBDA=true adds it).
# The ball-in-cup runs the paper's Table 2: 350 training episodes (35 rounds of 10) per learner and seed, MPQ also
# trained with domain randomisation, 100 final uniform starts, no heavier plant: about 4 hours on 2 cores.
# Jobs (a learner's seed, a planner's evaluation) run WORKERS at a time (one per CPU); a stopped run goes on where
# it stopped with `make reproduce RESUME=runs/demo/<time>`.
SEEDS ?= 3
WORKERS ?= $(shell nproc)
ROBUSTNESS ?= $(if $(filter pendulum cartpole,$(TASK)),pole=1.3)
# SOFT_Q=false leaves the soft-Q baseline out (a shorter run).
MPQ_LAMBDA ?= $(if $(filter pendulum,$(TASK)),true,false)
SOFT_Q ?= true
REPRODUCE_ROUNDS = $(if $(filter ball_in_cup,$(TASK)),--iterations 35 --episodes-per-iteration 10 \
	--updates-per-iteration 150 --eval-every 5 --final-episodes 100 --final-starts uniform \
	--domain-randomisation true,--iterations 20 --episodes-per-iteration 5 --final-episodes 50)
RESUME ?=
reproduce: setup
	$(BIN)/python -m offboard.demo $(if $(RESUME),--resume $(RESUME),--task $(TASK) $(REPRODUCE_ROUNDS) \
		--eval-episodes 10 --seeds $(SEEDS) $(if $(RAY),$(RAY_OPTIONS),--workers $(WORKERS)) \
		$(if $(ROBUSTNESS),--robustness $(ROBUSTNESS)) --mpq-lambda $(MPQ_LAMBDA) --soft-q $(SOFT_Q))

# One setting swept on Ray Tune, each (value, seed) trial a whole train-and-evaluate, one table and plot:
# `make sweep TASK=ball_in_cup PARAM=H VALUES=1,4,8,16 SEEDS=3` (the paper's Fig. 3); RAY=host:port for a cluster.
PARAM ?= H
VALUES ?= 4,8,16
sweep: setup
	$(BIN)/python -m offboard.sweep --task $(TASK) --param $(PARAM) --values $(VALUES) --sweep-seeds $(SEEDS) \
		$(if $(RAY),--ray $(RAY))

# A Q (or plain MPPI without Q) through the stand-in from 50 seeded starts: `make evaluate Q=runs/demo/<time>/q.onnx`;
# more settings with `python -m offboard evaluate --help`.
Q ?=
evaluate: setup
	$(BIN)/python -m offboard evaluate --task $(TASK) $(if $(Q),--q $(Q))

# MPQ training from the robot logs under data/, then export to models/$(TASK)/q.onnx.
DATA ?= data/sim
ITERATIONS ?= 5
train: setup
	$(BIN)/python -m offboard train --task $(TASK) --data $(DATA) --iterations $(ITERATIONS)

# Plan once from the task's hanging start and print the plan (what runs today before `make demo`).
plan: setup
	$(BIN)/python -m onboard plan --task $(TASK) $(if $(BACKEND),--backend $(BACKEND)) $(if $(Q),--q $(Q))

# The C headers a real microcontroller firmware compiles against, from firmware_bridge/mpq.xml.
firmware-headers: setup
	$(BIN)/python -m firmware_bridge.dialect c build/firmware_headers

# The firmware stand-in on a new pty (prints the port): `make standin TASK=pendulum MODE=realtime`.
standin: setup
	$(BIN)/python -m firmware_bridge.standin --task $(TASK) --mode $(MODE)

# The robot (robots/$(ROBOT).toml) over ssh: code + profile + model in a new release, switched atomically.
ROBOT ?= jetson
deploy: setup
	$(BIN)/python -m offboard deploy --robot $(ROBOT) $(if $(MODEL),--model $(MODEL))

rollback: setup
	$(BIN)/python -m offboard rollback --robot $(ROBOT)

# Closed segments into data/$(ROBOT)/, every sha256 verified; ROBOT="a b c" pulls several robots at once, each into
# its own folder; PRUNE=1 deletes on the robot what verified here.
pull-data: setup
	$(BIN)/python -m offboard pull-data --robot $(ROBOT) $(if $(filter 1,$(PRUNE)),--prune)

robot-status: setup
	$(BIN)/python -m offboard robot-status --robot $(ROBOT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs build
