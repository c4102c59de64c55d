# Every target creates .venv when it is missing, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The demo: synthetic data -> train (CPU, SSD300 at 1/8 width) -> eval -> inference -> figures/.
DEMO := runs/demo
DEMO_DATA := data/shapes
DEMO_TRAIN := --dataset Shapes --dataset_root $(DEMO_DATA) --basenet none --width 0.125 --batch_norm \
	--priors COCO --max_expand 2 --optimizer adamw --lr 2e-3 --weight_decay 5e-4 --batch_size 16 --end_epoch 9 \
	--warmup_epochs 0.3 --num_workers 2 --eval_interval 9 --seed 0

.PHONY: venv test demo bench clean

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

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf runs .pytest_cache
