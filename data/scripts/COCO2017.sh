#!/bin/sh
# COCO 2017 train/val images and instance annotations into <directory>/coco (default directory: ~/data).
# Usage: sh data/scripts/COCO2017.sh [directory]
set -eu
. "$(dirname "$0")/_fetch.sh"
fetch_and_unpack "${1:-$HOME/data}/coco" \
  http://images.cocodataset.org/zips/train2017.zip \
  http://images.cocodataset.org/zips/val2017.zip \
  http://images.cocodataset.org/annotations/annotations_trainval2017.zip
