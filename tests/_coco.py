"""The reference COCO evaluation: pycocotools' own ``COCOeval``, as its users call it.

Shared by the evaluator tests (bobx's numbers must equal these) and the benchmark (bobx's
time is compared with this)."""

from __future__ import annotations

import contextlib
import copy
import io


def pycocotools_ap(gt: dict, rows: list[dict], iou_type: str) -> list[float]:
    """``COCOeval.stats[:6]`` (AP, AP50, AP75, APs, APm, APl; -1 where no ground truth) of
    COCO results ``rows`` against the ground-truth dict ``gt``. For masks the rows' boxes
    are dropped first, so object sizes come from the masks (what bobx and detectron2 do)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        dets = copy.deepcopy(rows)
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox", None)
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]
