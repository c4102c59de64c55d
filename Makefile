# Every target creates .venv when it is missing, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The demo: synthetic data -> train (CPU, SSD300 at 1/8 width) -> eval -> inference -> figures/.
DEMO := runs/demo
DEMO_DATA := data/shapes
DEMO_RECIPE := --dataset Shapes --basenet none --width 0.125 --batch_norm --priors COCO --max_expand 2 \
	--optimizer adamw --lr 2e-3 --weight_decay 5e-4 --batch_size 16 --warmup_epochs 0.3 \
	--num_workers 2 --seed 0
DEMO_TRAIN := $(DEMO_RECIPE) --end_epoch 9 --dataset_root $(DEMO_DATA) --eval_interval 9

# The domain adaptation demo (docs/domain_adaptation.md, "Domain adaptation"): foggy shapes, make demo's recipe for every configuration
# (the same iterations at the same batch), each scored on the foggy test split.
DA := runs/demo_da
DA_DATA := data/shapes_fog
# 12 epochs, not make demo's 9: at 9 the oracle, trained from scratch on foggy images, is not yet a ceiling.
DA_TRAIN := $(DEMO_RECIPE) --end_epoch 12 --eval_interval 0
DA_CLEAN := --dataset_root $(DA_DATA)/clean --target_root $(DA_DATA)/foggy
# The mean teacher's EMA, scaled to this short run (Adaptive Teacher's 0.9996 spans its 100,000 steps): ~100 steps.
# Its burn-in is train.py's default, a fifth of the run (Adaptive Teacher's 20,000 of 100,000).
DA_MT := --ema_decay 0.99
# A trained method for demo-da's table beside AdaBN. Empty: AdaBN, applied at evaluation, is the best single method
# measured (docs/domain_adaptation.md, "Domain adaptation"), and training one more configuration would take demo-da past 25 minutes.
DA_BEST :=
DA_BEST_NAME :=
DA_EVAL := --dataset Shapes --dataset_root $(DA_DATA)/foggy --num_workers 2 --project $(DA)

.PHONY: venv test demo demo-da demo-da-all da-run da-table bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	rm -rf $(DEMO)
	$(PY) -m data.shapes --out $(DEMO_DATA) --overwrite --train 2000 --test 300 --seed 0 --video $(DEMO)/shapes.mp4 --frames 48
	$(PY) train.py $(DEMO_TRAIN) --project $(DEMO) --name train
	$(PY) eval.py --weights $(DEMO)/train1/last.pth --dataset Shapes --dataset_root $(DEMO_DATA) --num_workers 2 \
		--project $(DEMO) --name eval
	$(PY) inference.py --weights $(DEMO)/train1/last.pth --source "$(DEMO_DATA)/JPEGImages/test_00000[0-7].jpg" \
		--thresh 0.5 --project $(DEMO) --name images
	$(PY) inference.py --weights $(DEMO)/train1/last.pth --video $(DEMO)/shapes.mp4 --thresh 0.5 --project $(DEMO) --name video
	$(PY) -m utils.figures grid --images "$(DEMO)/images1/*.jpg" --columns 4 --out figures/demo.jpg
	$(PY) -m utils.figures gif --video $(DEMO)/video1/shapes.mp4 --every 2 --width 320 --out figures/demo.gif
	cp $(DEMO)/train1/results.png figures/demo_results.png
	@echo "demo done: figures/demo.jpg, figures/demo.gif, figures/demo_results.png; runs in $(DEMO)/"

# The labelled val split of the target (other scenes than trainval's and test's) is for choices; test is read for the table only.
DA_DATA_CMD := $(PY) -m data.shapes --out $(DA_DATA) --overwrite --train 2000 --val 300 --test 300 --seed 0 --fog 0.02

demo-da: $(STAMP)
	rm -rf $(DA)
	$(DA_DATA_CMD)
	$(PY) -m utils.figures grid --images "$(DA_DATA)/*/JPEGImages/test_00000[0-3].jpg" --columns 4 --cell 240 \
		--out figures/foggy_shapes.jpg
	$(PY) train.py $(DA_TRAIN) $(DA_CLEAN) --project $(DA) --name source_only
	$(PY) train.py $(DA_TRAIN) --dataset_root $(DA_DATA)/foggy --project $(DA) --name oracle
	$(if $(DA_BEST),$(PY) train.py $(DA_TRAIN) $(DA_CLEAN) $(DA_BEST) --project $(DA) --name best_da)
	$(PY) eval.py --weights $(DA)/source_only1/last.pth $(DA_EVAL) --name eval_source_only
	$(PY) eval.py --weights $(DA)/source_only1/last.pth --adabn $(DA_DATA)/foggy $(DA_EVAL) --name eval_adabn
	$(PY) eval.py --weights $(DA)/oracle1/last.pth $(DA_EVAL) --name eval_oracle
	$(if $(DA_BEST),$(PY) eval.py --weights $(DA)/best_da1/last.pth $(DA_EVAL) --name eval_best_da)
	$(PY) -m utils.evaluation.compare "source-only=$(DA)/eval_source_only1" "adabn (at evaluation)=$(DA)/eval_adabn1" \
		$(if $(DA_BEST),"$(DA_BEST_NAME)=$(DA)/eval_best_da1") "oracle=$(DA)/eval_oracle1" --out $(DA)/table.md
	@echo "demo-da done: $(DA)/table.md (foggy shapes test split, 300 images)"

# Every configuration of docs/domain_adaptation.md's seeded table, one seed (SEED, default 0), then the table of every
# seed kept so far (make da-table). About 8 hours on 2 CPU cores: each DA run trains two passes a step.
demo-da-all: $(STAMP)
	$(MAKE) da-run NAME=source_only SEED=$(SEED)
	$(MAKE) da-run NAME=oracle FLAGS="--dataset_root $(DA_DATA)/foggy" SEED=$(SEED)
	$(MAKE) da-run NAME=target_bn FLAGS="--da target_bn" SEED=$(SEED)
	$(MAKE) da-run NAME=grl FLAGS="--da grl" SEED=$(SEED)
	$(MAKE) da-run NAME=grl_joint FLAGS="--da grl --da_batch joint" SEED=$(SEED)
	$(MAKE) da-run NAME=swda FLAGS="--da grl --swda" SEED=$(SEED)
	$(MAKE) da-run NAME=swda_joint FLAGS="--da grl --swda --da_batch joint" SEED=$(SEED)
	$(MAKE) da-run NAME=i3net FLAGS="--da i3net" SEED=$(SEED)
	$(MAKE) da-run NAME=mean_teacher FLAGS="--da mean_teacher $(DA_MT)" SEED=$(SEED)
	$(MAKE) da-run NAME=i3net_mean_teacher FLAGS="--da i3net mean_teacher $(DA_MT)" SEED=$(SEED)
	$(MAKE) da-table

# One configuration, one seed, of docs/domain_adaptation.md's seeded table: make da-run NAME=i3net FLAGS="--da i3net" SEED=1
# Trains make demo-da's recipe, scores last.pth on the foggy test split as it is and after eval.py --adabn (and a mean
# teacher's teacher.pth), and keeps each ap.json and the run's times under $(RESULTS)/<configuration>/. The oracle:
# NAME=oracle FLAGS="--dataset_root $(DA_DATA)/foggy". make da-table builds the table from every kept ap.json.
RESULTS := results/foggy_shapes
SEED := 0
da-run: $(STAMP)
	@test -n "$(NAME)" || { echo 'usage: make da-run NAME=<configuration> FLAGS="<train.py flags>" SEED=<n>'; exit 2; }
	test -f $(DA_DATA)/foggy/ImageSets/Main/val.txt || $(DA_DATA_CMD)
	rm -rf $(DA)/$(NAME)_seed$(SEED)_* $(DA)/eval_$(NAME)_seed$(SEED)_*
	mkdir -p $(RESULTS)/$(NAME) $(RESULTS)/$(NAME)+adabn
	/usr/bin/time -f "%e s wall, %U s user, %S s system" -o $(RESULTS)/$(NAME)/seed$(SEED).time \
		$(PY) train.py $(DA_TRAIN) $(DA_CLEAN) $(FLAGS) --seed $(SEED) --project $(DA) --name $(NAME)_seed$(SEED)_
	$(PY) eval.py --weights $(DA)/$(NAME)_seed$(SEED)_1/last.pth $(DA_EVAL) --name eval_$(NAME)_seed$(SEED)_
	cp $(DA)/eval_$(NAME)_seed$(SEED)_1/ap.json $(RESULTS)/$(NAME)/seed$(SEED).json
	$(PY) eval.py --weights $(DA)/$(NAME)_seed$(SEED)_1/last.pth --adabn $(DA_DATA)/foggy $(DA_EVAL) --name eval_$(NAME)_seed$(SEED)_adabn_
	cp $(DA)/eval_$(NAME)_seed$(SEED)_adabn_1/ap.json $(RESULTS)/$(NAME)+adabn/seed$(SEED).json
	if test -f $(DA)/$(NAME)_seed$(SEED)_1/teacher.pth; then mkdir -p $(RESULTS)/$(NAME)_teacher && \
		$(PY) eval.py --weights $(DA)/$(NAME)_seed$(SEED)_1/teacher.pth $(DA_EVAL) --name eval_$(NAME)_seed$(SEED)_teacher_ && \
		cp $(DA)/eval_$(NAME)_seed$(SEED)_teacher_1/ap.json $(RESULTS)/$(NAME)_teacher/seed$(SEED).json; fi

da-table: $(STAMP)
	$(PY) -m utils.evaluation.compare --seeds $(RESULTS) --out $(RESULTS)/table.md

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf runs .pytest_cache
