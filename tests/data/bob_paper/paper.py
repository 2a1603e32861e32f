"""The BoB paper's appendix numbers (arXiv 2310.19909v2) as bobx result records, and its claims.

Loaded by tests/test_ranking.py and tests/test_correlation.py (by file path; this directory is
data, not a package). Rebuild the CSVs from a text extraction of the paper with
``python tests/data/bob_paper/paper.py PATH/TO/bob-paper.txt``.

Each appendix table row of the text extraction is mapped, by line number, to a backbone slug;
the row's numbers are its last whitespace tokens (the extraction splits some decimals as
``61 .0``, which is re-joined; ``-`` and ``−`` mean "not reported"). Every value is written as
printed in the paper: nothing is corrected. Known oddities of the paper are listed in README.md.
The script asserts the label text of every mapped line so a different text extraction fails
loudly instead of silently shifting rows.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_CSV = HERE / "bob_paper_results.csv"
TABLE19_CSV = HERE / "table19_zscores.csv"
META_CSV = HERE / "meta.csv"
COLUMNS = [
    "backbone", "task", "dataset", "split", "metric", "value", "higher_is_better", "params",
    "source",
]  # fmt: skip


def params(**knobs: object) -> str:
    return json.dumps(knobs, sort_keys=True, separators=(",", ":"))


FT = params(protocol="finetune")
LP = params(protocol="linear_probe")
FROZEN = params(protocol="frozen")

# (line number in the text, label the line must start with, slug)
T8 = [
    (1151, "ResNet-50Supervised", "sup_resnet50_in1k"),
    (1152, "VicReg", "vicreg_resnet50_in1k"),
    (1153, "CLIP", "clip_resnet50_openai"),
    (1154, "DINO", "dino_resnet50_in1k"),
    (1155, "ViT-SmallSupervised", "sup_vits_in1k"),
    (1156, "MoCoV3", "mocov3_vits_in1k"),
    (1157, "DINO", "dino_vits_in1k"),
    (1158, "ViT-BaseSupervised", "sup_vitb_in1k"),
    (1159, "MoCoV3", "mocov3_vitb_in1k"),
    (1160, "MAE", "mae_vitb_in1k"),
    (1161, "DINO", "dino_vitb_in1k"),
    (1162, "CLIP", "clip_vitb_laion2b"),
    (1163, "SwinV2-TinySupervised", "sup_swinv2_t_in1k"),
    (1164, "MiDaS", "midas_swinv2_t"),
    (1165, "SwinV2-BaseSupervised", "sup_swinv2_b_in21k"),
    (1166, "MiDaS", "midas_swinv2_b"),
    (1167, "Stable Diffusion", "sd_laion2b"),
]
# Table 9: the ImageNet column of a "Rand Init" row is the supervised ImageNet-1k model of that
# architecture (the caption says so, and Tables 8 and 10 list those numbers as "Supervised").
T9 = [
    (1173, "ResNet-50Rand Init", "rand_resnet50", "sup_resnet50_in1k"),
    (1174, "Supervised", "sup_resnet50_in1k", None),
    (1175, "VicReg", "vicreg_resnet50_in1k", None),
    (1176, "CLIP", "clip_resnet50_openai", None),
    (1177, "DINO", "dino_resnet50_in1k", None),
    (1178, "ResNet-101Rand Init", "rand_resnet101", "sup_resnet101_in1k"),
    (1179, "Supervised", "sup_resnet101_in1k", None),
    (1180, "ViT-SmallRand Init", "rand_vits", "sup_vits_in1k"),
    (1181, "Supervised ImageNet-1k", "sup_vits_in1k", None),
    (1182, "Supervised ImageNet-21k", "sup_vits_in21k", None),
    (1183, "MoCoV3", "mocov3_vits_in1k", None),
    (1184, "DINO", "dino_vits_in1k", None),
    (1185, "ViT-BaseRand Init", "rand_vitb", "sup_vitb_in1k"),
    (1186, "Supervised ImageNet-1k", "sup_vitb_in1k", None),
    (1187, "Supervised ImageNet-21k", "sup_vitb_in21k", None),
    (1188, "MoCoV3", "mocov3_vitb_in1k", None),
    (1189, "MAE", "mae_vitb_in1k", None),
    (1190, "DINO", "dino_vitb_in1k", None),
    (1191, "CLIP", "clip_vitb_laion2b", None),
    (1192, "SwinV2-TinyRand Init", "rand_swinv2_t", "sup_swinv2_t_in1k"),
    (1193, "Supervised", "sup_swinv2_t_in1k", None),
    (1194, "MiDaS", "midas_swinv2_t", None),
    (1195, "SwinV2-BaseSupervised", "sup_swinv2_b_in21k", None),
    (1196, "MiDaS", "midas_swinv2_b", None),
    (1197, "ConvNeXt-TinyRand Init", "rand_convnext_t", "sup_convnext_t_in1k"),
    (1198, "Supervised", "sup_convnext_t_in1k", None),
    (1199, "ConvNeXt-BaseRand Init", "rand_convnext_b", "sup_convnext_b_in1k"),
    (1200, "Supervised ImageNet-1k", "sup_convnext_b_in1k", None),
    (1201, "Supervised ImageNet-21k", "sup_convnext_b_in21k", None),
    (1202, "Stable Diffusion", "sd_laion2b", None),
]
T10 = [
    (1216, "ResNet-50Supervised", "sup_resnet50_in1k"),
    (1217, "VicReg", "vicreg_resnet50_in1k"),
    (1218, "CLIP", "clip_resnet50_openai"),
    (1219, "DINO", "dino_resnet50_in1k"),
    (1220, "ResNet-101 Supervised", "sup_resnet101_in1k"),
    (1221, "ViT-SmallSupervised", "sup_vits_in1k"),
    (1222, "Supervised ImageNet-21k", "sup_vits_in21k"),
    (1223, "MoCoV3", "mocov3_vits_in1k"),
    (1224, "DINO", "dino_vits_in1k"),
    (1225, "ViT-BaseSupervised", "sup_vitb_in1k"),
    (1226, "Supervised ImageNet-21k", "sup_vitb_in21k"),
    (1227, "MoCoV3", "mocov3_vitb_in1k"),
    (1228, "MAE", "mae_vitb_in1k"),
    (1229, "DINO", "dino_vitb_in1k"),
    (1230, "CLIP", "clip_vitb_laion2b"),
    (1231, "SwinV2-TinySupervised", "sup_swinv2_t_in1k"),
    (1232, "MiDaS", "midas_swinv2_t"),
    (1233, "ConvNeXt-Tiny Supervised", "sup_convnext_t_in1k"),
    (1234, "ConvNeXt-BaseSupervised", "sup_convnext_b_in1k"),
    (1235, "Supervised ImageNet-21k", "sup_convnext_b_in21k"),
]
T11 = [
    (1248, "ResNet-50Supervised", "sup_resnet50_in1k"),
    (1249, "VicReg", "vicreg_resnet50_in1k"),
    (1250, "DINO", "dino_resnet50_in1k"),
    (1251, "ResNet-101 Supervised", "sup_resnet101_in1k"),
    (1252, "ViT-SmallSupervised", "sup_vits_in1k"),
    (1253, "MoCoV3", "mocov3_vits_in1k"),
    (1254, "DINO", "dino_vits_in1k"),
    (1255, "ViT-BaseSupervised", "sup_vitb_in1k"),
    (1256, "MoCoV3", "mocov3_vitb_in1k"),
    (1257, "MAE", "mae_vitb_in1k"),
    (1258, "DINO", "dino_vitb_in1k"),
    (1259, "CLIP", "clip_vitb_laion2b"),
    (1260, "SwinV2-TinySupervised", "sup_swinv2_t_in1k"),
    (1261, "MiDaS", "midas_swinv2_t"),
    (1262, "SwinV2-Base-w8 Supervised", "sup_swinv2_b_w8_in1k"),
    (1263, "SwinV2-Base-w24Supervised", "sup_swinv2_b_in21k"),
    (1264, "MiDaS", "midas_swinv2_b"),
    (1265, "ConvNeXt-Tiny Supervised", "sup_convnext_t_in1k"),
    (1266, "ConvNeXt-BaseSupervised", "sup_convnext_b_in1k"),
    (1267, "Supervised ImageNet-21k", "sup_convnext_b_in21k"),
    (1268, "Stable Diffusion", "sd_laion2b"),
]
T12 = [
    (1279, "ResNet-50Random Init", "rand_resnet50"),
    (1280, "Supervised", "sup_resnet50_in1k"),
    (1281, "VicReg", "vicreg_resnet50_in1k"),
    (1282, "DINO", "dino_resnet50_in1k"),
    (1283, "ResNet-101Random Init", "rand_resnet101"),
    (1284, "Supervised", "sup_resnet101_in1k"),
    (1285, "ViT-SmallRandom Init", "rand_vits"),
    (1286, "Supervised", "sup_vits_in1k"),
    (1287, "MoCoV3", "mocov3_vits_in1k"),
    (1288, "DINO", "dino_vits_in1k"),
    (1289, "ViT-BaseRandom Init", "rand_vitb"),
    (1290, "Supervised", "sup_vitb_in1k"),
    (1291, "MoCoV3", "mocov3_vitb_in1k"),
    (1292, "MAE", "mae_vitb_in1k"),
    (1293, "DINO", "dino_vitb_in1k"),
    (1294, "CLIP", "clip_vitb_laion2b"),
    (1295, "SwinV2-TinyRandom Init", "rand_swinv2_t"),
    (1296, "Supervised", "sup_swinv2_t_in1k"),
    (1297, "MiDaS", "midas_swinv2_t"),
    (1298, "SwinV2-Base-w8Random Init", "rand_swinv2_b_w8"),
    (1299, "Supervised", "sup_swinv2_b_w8_in1k"),
    (1300, "SwinV2-Base-w24Supervised", "sup_swinv2_b_in21k"),
    (1301, "MiDaS", "midas_swinv2_b"),
    (1302, "ConvNeXt-TinyRandom Init", "rand_convnext_t"),
    (1303, "Supervised", "sup_convnext_t_in1k"),
    (1304, "ConvNeXt-BaseRandom Init", "rand_convnext_b"),
    (1305, "Supervised ImageNet-1k", "sup_convnext_b_in1k"),
    (1306, "Supervised ImageNet-21k", "sup_convnext_b_in21k"),
    (1307, "Stable DiffusionRandom Init", "rand_sd"),
    (1308, "Stable Diffusion LAION-2B", "sd_laion2b"),
]
T13 = [
    (1315, "SwinV2-TinySupervised", "sup_swinv2_t_in1k"),
    (1316, "MiDaS", "midas_swinv2_t"),
    (1317, "SwinV2-Base-w8 Supervised", "sup_swinv2_b_w8_in1k"),
    (1318, "ConvNeXt-Tiny Supervised", "sup_convnext_t_in1k"),
    (1319, "ConvNeXt-Base Supervised", "sup_convnext_b_in1k"),
]
T14 = [
    (1325, "ResNet-50Rand Init", "rand_resnet50"),
    (1326, "Supervised", "sup_resnet50_in1k"),
    (1327, "VicReg", "vicreg_resnet50_in1k"),
    (1328, "CLIP", "clip_resnet50_openai"),
    (1329, "DINO", "dino_resnet50_in1k"),
    (1330, "ResNet-101Rand Init", "rand_resnet101"),
    (1331, "Supervised", "sup_resnet101_in1k"),
    (1332, "ViT-BaseRand Init", "rand_vitb"),
    (1333, "Supervised ImageNet-1k", "sup_vitb_in1k"),
    (1334, "Supervised ImageNet-21k-1k", "sup_vitb_in21k"),
    (1335, "MoCoV3", "mocov3_vitb_in1k"),
    (1336, "MAE", "mae_vitb_in1k"),
    (1337, "DINO", "dino_vitb_in1k"),
    (1338, "CLIP", "clip_vitb_laion2b"),
    (1339, "SwinV2-Tiny MiDaS", "midas_swinv2_t"),
    (1340, "SwinV2-BaseSupervised", "sup_swinv2_b_in21k"),
    (1341, "MiDaS", "midas_swinv2_b"),
    (1342, "ConvNeXt-BaseSupervised", "sup_convnext_b_in1k"),
    (1343, "Supervised ImageNet-21k", "sup_convnext_b_in21k"),
]
T15 = [
    (1352, "ResNet-50Random Init", "rand_resnet50"),
    (1353, "Supervised", "sup_resnet50_in1k"),
    (1354, "VicReg", "vicreg_resnet50_in1k"),
    (1355, "DINO", "dino_resnet50_in1k"),
    (1356, "ResNet-101Random Init", "rand_resnet101"),
    (1357, "Supervised", "sup_resnet101_in1k"),
    (1358, "ViT-SmallRandom Init", "rand_vits"),
    (1359, "Supervised", "sup_vits_in1k"),
    (1360, "MoCoV3", "mocov3_vits_in1k"),
    (1361, "DINO", "dino_vits_in1k"),
    (1362, "ViT-BaseRandom Init", "rand_vitb"),
    (1363, "Supervised", "sup_vitb_in1k"),
    (1364, "MoCoV3", "mocov3_vitb_in1k"),
    (1365, "MAE", "mae_vitb_in1k"),
    (1366, "DINO", "dino_vitb_in1k"),
    (1367, "CLIP", "clip_vitb_laion2b"),
    (1368, "SwinV2-TinyRandom Init", "rand_swinv2_t"),
    (1369, "Supervised", "sup_swinv2_t_in1k"),
    (1370, "MiDaS", "midas_swinv2_t"),
    (1371, "SwinV2-Base-w8Random Init", "rand_swinv2_b_w8"),
    (1372, "Supervised", "sup_swinv2_b_w8_in1k"),
    (1373, "SwinV2-Base-w24Supervised", "sup_swinv2_b_in21k"),
    (1374, "MiDaS", "midas_swinv2_b"),
    (1375, "ConvNeXt-TinyRandom Init", "rand_convnext_t"),
    (1376, "Supervised", "sup_convnext_t_in1k"),
    (1377, "ConvNeXt-BaseRandom Init", "rand_convnext_b"),
    (1378, "Supervised ImageNet-1k", "sup_convnext_b_in1k"),
    (1379, "Supervised ImageNet-21k", "sup_convnext_b_in21k"),
]
# Retrieval tables 16-18 list rows in different orders and with different members, so each
# gets its own map. "SwinV2-Base" without a window size is the w24 model (appendix B.1).
T16 = [
    (1399, "ConvNext-BaseSupervised", "sup_convnext_b_in1k"),
    (1400, "Supervised ImageNet-21k-1k", "sup_convnext_b_in21k"),
    (1401, "ConvNext-SmallSupervised", "sup_convnext_s_in1k"),
    (1402, "Supervised ImageNet-21k-1k", "sup_convnext_s_in21k"),
    (1403, "ConvNext-XLarge Supervised", "sup_convnext_xl_in21k"),
    (1404, "ResNet-101CLIP", "clip_resnet101_openai"),
    (1405, "Supervised", "sup_resnet101_in1k"),
    (1406, "ResNet-50CLIP", "clip_resnet50_openai"),
    (1407, "Supervised", "sup_resnet50_in1k"),
    (1408, "ResNet-50 VicReg", "vicreg_resnet50_in1k"),
    (1409, "ResNet-50x64 CLIP", "clip_resnet50x64_openai"),
    (1410, "SwinV2-BaseMiDaS", "midas_swinv2_b"),
    (1411, "Supervised ImageNet-21k-1k", "sup_swinv2_b_in21k"),
    (1412, "SwinV2-Base-w16 Supervised", "sup_swinv2_b_w16_in21k"),
    (1413, "SwinV2-Large-w16 Supervised", "sup_swinv2_l_w16_in21k"),
    (1414, "SwinV2-Tiny MiDaS", "midas_swinv2_t"),
    (1415, "SwinV2-TinySupervised", "sup_swinv2_t_in1k"),
    # line 1416 repeats line 1415 digit for digit (a duplicated row in the paper): skipped.
    (1417, "ViT-BaseCLIP", "clip_vitb_laion2b"),
    (1418, "MAE", "mae_vitb_in1k"),
    (1419, "ViT-BaseMoCoV3", "mocov3_vitb_in1k"),
    (1420, "Supervised", "sup_vitb_in1k"),
    (1421, "ViT-BaseSupervised ImageNet-21k-1k", "sup_vitb_in21k"),
    (1422, "DINO", "dino_vitb_in1k"),
    (1423, "ViT-LargeCLIP", "clip_vitl_laion2b"),
    (1424, "MAE", "mae_vitl_in1k"),
    (1425, "ViT-Large Supervised", "sup_vitl_in21k"),
    (1426, "Vit-SmallMoCoV3", "mocov3_vits_in1k"),
    (1427, "Supervised", "sup_vits_in1k"),
    (1428, "Vit-SmallSupervised ImageNet-21k-1k", "sup_vits_in21k"),
    (1429, "DINO", "dino_vits_in1k"),
]
T17_18_ROWS = [
    ("ConvNext-BaseSupervised", "sup_convnext_b_in1k"),
    ("Supervised ImageNet-21k-1k", "sup_convnext_b_in21k"),
    ("ConvNext-SmallSupervised", "sup_convnext_s_in1k"),
    ("Supervised ImageNet-21k-1k", "sup_convnext_s_in21k"),
    ("ConvNext-XLarge Supervised", "sup_convnext_xl_in21k"),
    ("ResNet-101CLIP", "clip_resnet101_openai"),
    ("Supervised", "sup_resnet101_in1k"),
    ("ResNet-50CLIP", "clip_resnet50_openai"),
    ("Supervised", "sup_resnet50_in1k"),
    ("VicReg", "vicreg_resnet50_in1k"),
    ("ResNet-50x64 CLIP", "clip_resnet50x64_openai"),
    ("SwinV2-Base MiDaS", "midas_swinv2_b"),
    ("SwinV2-Base-w16 Supervised", "sup_swinv2_b_w16_in21k"),
    ("SwinV2-Base-w24 Supervised", "sup_swinv2_b_in21k"),
    ("SwinV2-Large-w16 Supervised", "sup_swinv2_l_w16_in21k"),
    ("SwinV2-Large-w24 Supervised", "sup_swinv2_l_w24_in21k"),
    ("SwinV2-TinyMiDaS", "midas_swinv2_t"),
    ("Supervised", "sup_swinv2_t_in1k"),
    ("ViT-BaseCLIP", "clip_vitb_laion2b"),
    ("MAE", "mae_vitb_in1k"),
    ("MoCoV3", "mocov3_vitb_in1k"),
    ("Supervised ImageNet-1k", "sup_vitb_in1k"),
    ("Supervised ImageNet-21k-1k", "sup_vitb_in21k"),
    ("DINO", "dino_vitb_in1k"),
]
T17 = [(1455 + i, label, slug) for i, (label, slug) in enumerate(T17_18_ROWS)] + [
    (1479, "ViT-LargeMAE", "mae_vitl_in1k"),
    (1480, "CLIP", "clip_vitl_laion2b"),
    (1481, "Supervised", "sup_vitl_in21k"),
    (1482, "ViT-SmallMoCoV3", "mocov3_vits_in1k"),
    (1483, "Supervised ImageNet-1k", "sup_vits_in1k"),
    (1484, "Supervised ImageNet-21k-1k", "sup_vits_in21k"),
    (1485, "DINO", "dino_vits_in1k"),
]
T18 = [(1497 + i, label, slug) for i, (label, slug) in enumerate(T17_18_ROWS)] + [
    (1521, "ViT-LargeCLIP", "clip_vitl_laion2b"),
    (1522, "MAE", "mae_vitl_in1k"),
    (1523, "Supervised", "sup_vitl_in21k"),
    (1524, "Vit-SmallMoCoV3", "mocov3_vits_in1k"),
    (1525, "Supervised ImageNet-1k", "sup_vits_in1k"),
    (1526, "Supervised ImageNet-21k-1k", "sup_vits_in21k"),
    (1527, "DINO", "dino_vits_in1k"),
]
T19 = [
    (1531 + i, label, slug)
    for i, (label, slug) in enumerate(
        [
            ("ResNet-50Supervised", "sup_resnet50_in1k"),
            ("VicReg", "vicreg_resnet50_in1k"),
            ("CLIP", "clip_resnet50_openai"),
            ("DINO", "dino_resnet50_in1k"),
            ("ResNet-101 Supervised", "sup_resnet101_in1k"),
            ("ViT-SmallSupervised", "sup_vits_in1k"),
            ("Supervised ImageNet-21k", "sup_vits_in21k"),
            ("MoCoV3", "mocov3_vits_in1k"),
            ("DINO", "dino_vits_in1k"),
            ("ViT-BaseSupervised", "sup_vitb_in1k"),
            ("Supervised ImageNet-21k", "sup_vitb_in21k"),
            ("MoCoV3", "mocov3_vitb_in1k"),
            ("MAE", "mae_vitb_in1k"),
            ("DINO", "dino_vitb_in1k"),
            ("CLIP", "clip_vitb_laion2b"),
            ("SwinV2-TinySupervised", "sup_swinv2_t_in1k"),
            ("MiDaS", "midas_swinv2_t"),
            ("ConvNeXt-Tiny Supervised", "sup_convnext_t_in1k"),
            ("ConvNeXt-BaseSupervised", "sup_convnext_b_in1k"),
            ("Supervised ImageNet-21k", "sup_convnext_b_in21k"),
        ]
    )
]

RETRIEVAL_DATASETS = [
    "cub200", "inaturalist", "objectnet", "instre", "gldv2", "roxford5k", "rparis6k", "copydays",
]  # fmt: skip


def numbers(lines: list[str], lineno: int, label: str, n: int) -> list[float]:
    """The last ``n`` numbers of text line ``lineno`` (1-based), NaN for ``-``."""
    line = lines[lineno - 1]
    if not line.startswith(label):
        raise SystemExit(f"line {lineno} does not start with {label!r}: {line!r}")
    line = re.sub(r"(\d) \.(\d)", r"\1.\2", line).replace("VisDA (syn)", " ")
    tokens = line.split()[-n:]
    return [math.nan if t in {"-", "−"} else float(t) for t in tokens]


def build(paper: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Result records and Table 19's printed z-scores, as rows, from the paper's text."""
    lines = paper.read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, object]] = []

    def add(slug: str, task: str, dataset: str, split: str, metric: str, value: float,
            higher: bool, knobs: str, source: str) -> None:  # fmt: skip
        if not math.isnan(value):
            rows.append(dict(zip(COLUMNS, [slug, task, dataset, split, metric, value, higher,
                                           knobs, source], strict=True)))  # fmt: skip

    # Table 8: ImageNet-1k, linear probe / full fine-tune / 10% / 1% fine-tune; top-1 and top-5.
    t8_protocols = [LP, FT, params(protocol="finetune", train_fraction=0.1),
                    params(protocol="finetune", train_fraction=0.01)]  # fmt: skip
    for lineno, label, slug in T8:
        vals = numbers(lines, lineno, label, 8)
        for i, knobs in enumerate(t8_protocols):
            for j, metric in enumerate(("top1", "top5")):
                add(slug, "classification", "imagenet-1k", "val", metric, vals[2 * i + j],
                    True, knobs, "table8")  # fmt: skip

    # Table 9: fine-tuning top-1 on five transfer datasets (+ ImageNet, checked against Table 8).
    # EuroSAT and CheXpert use 10% of the labelled training set (appendix B.3); CheXpert is
    # multi-label and scored with AUC (section 3.1) although the caption says "top-1".
    t8_top1 = {(r["backbone"]): r["value"] for r in rows
               if r["metric"] == "top1" and r["params"] == FT}  # fmt: skip
    t9_sets = [
        ("eurosat", "top1", params(protocol="finetune", train_fraction=0.1)),
        ("flowers102", "top1", FT),
        ("cifar100", "top1", FT),
        ("chexpert", "auc", params(protocol="finetune", train_fraction=0.1)),
        ("aircraft", "top1", FT),
    ]
    for lineno, label, slug, imagenet_owner in T9:
        vals = numbers(lines, lineno, label, 6)
        owner = imagenet_owner or slug
        if not math.isnan(vals[0]):
            if owner in t8_top1:
                assert t8_top1[owner] == vals[0], (owner, t8_top1[owner], vals[0])
            else:
                add(owner, "classification", "imagenet-1k", "val", "top1", vals[0], True, FT,
                    "table9")  # fmt: skip
                t8_top1[owner] = vals[0]
        for (dataset, metric, knobs), value in zip(t9_sets, vals[1:], strict=True):
            add(slug, "classification", dataset, "test", metric, value, True, knobs, "table9")

    # Table 10: ImageNet calibration (accuracy duplicates the fine-tune top-1; checked).
    for lineno, label, slug in T10:
        acc, ce, ece = numbers(lines, lineno, label, 3)
        assert t8_top1[slug] == acc, (slug, t8_top1[slug], acc)
        add(slug, "calibration", "imagenet-1k", "val", "nll", ce, False, FT, "table10")
        add(slug, "calibration", "imagenet-1k", "val", "ece", ece, False,
            params(bins=15, protocol="finetune"), "table10")  # fmt: skip

    # Tables 11-13: Cascade Mask R-CNN; box metrics -> detection, mask metrics -> segmentation.
    dense = [("detection", "ap_box"), ("detection", "ap50_box"), ("detection", "ap75_box"),
             ("segmentation", "ap_mask"), ("segmentation", "ap50_mask"),
             ("segmentation", "ap75_mask")]  # fmt: skip
    for table, spec, dataset, knobs in (
        ("table11", T11, "coco", FROZEN),
        ("table12", T12, "coco", FT),
        ("table13", T13, "lvis-v1", FT),
    ):
        for lineno, label, slug in spec:
            vals = numbers(lines, lineno, label, 6)
            for (task, metric), value in zip(dense, vals, strict=True):
                add(slug, task, dataset, "val", metric, value, True, knobs, table)

    # Table 14: OOD classification (ImageNet-1k-trained models; VisDA syn -> real).
    ood = ["imagenet-a", "imagenet-sketch", "imagenet-r", "imagenet-v2", "visda"]
    for lineno, label, slug in T14:
        vals = numbers(lines, lineno, label, 5)
        for dataset, value in zip(ood, vals, strict=True):
            knobs = (
                params(train="visda-synthetic")
                if dataset == "visda"
                else params(train="imagenet-1k")
            )
            add(slug, "ood_classification", dataset, "test", "top1", value, True, knobs,
                "table14")  # fmt: skip

    # Table 15: Sim10k -> Cityscapes car detection, fine-tuned and frozen backbone.
    for lineno, label, slug in T15:
        ft, frozen = numbers(lines, lineno, label, 2)
        for value, knobs in ((ft, FT), (frozen, FROZEN)):
            add(
                slug,
                "ood_detection",
                "cityscapes",
                "val",
                "ap50",
                value,
                True,
                params(protocol=json.loads(knobs)["protocol"], train="sim10k"),
                "table15",
            )

    # Tables 16-18: retrieval with frozen features.
    assert numbers(lines, 1415, "SwinV2-Tiny", 8) == numbers(lines, 1416, "Supervised", 8)
    for table, spec, metric in (("table16", T16, "map"), ("table17", T17, "mrr"),
                                ("table18", T18, "recall@5")):  # fmt: skip
        for lineno, label, slug in spec:
            vals = numbers(lines, lineno, label, 8)
            for dataset, value in zip(RETRIEVAL_DATASETS, vals, strict=True):
                add(slug, "retrieval", dataset, "test", metric, value, True, "{}", table)

    # Table 19: PGD robustness (clean accuracy duplicates the fine-tune top-1; checked).
    zrows = []
    for lineno, label, slug in T19:
        clean, e1, e2, z = numbers(lines, lineno, label, 4)
        assert t8_top1[slug] == clean, (slug, t8_top1[slug], clean)
        for eps, value in (("1/255", e1), ("2/255", e2)):
            add(
                slug,
                "robustness",
                "imagenet-1k",
                "val",
                "top1",
                value,
                True,
                params(attack="pgd", eps=eps, norm="linf", steps=20),
                "table19",
            )
        zrows.append({"backbone": slug, "z_paper": z})
    return rows, zrows


def main(paper: Path) -> None:
    rows, zrows = build(paper)
    with RESULTS_CSV.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with TABLE19_CSV.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["backbone", "z_paper"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(zrows)
    print(f"wrote {len(rows)} records to {RESULTS_CSV.name}, {len(zrows)} to {TABLE19_CSV.name}")


# --------------------------------------------------------------------------------------------
# Loading, and what the paper claims
# --------------------------------------------------------------------------------------------

#: The six tasks of the paper's Table 2 (calibration and robustness are appendix-only).
TABLE2_TASKS = (
    "classification", "detection", "segmentation", "retrieval", "ood_classification",
    "ood_detection",
)  # fmt: skip

#: Table 2 "Which backbone should I choose?", best first (the paper prints Good, Better, Best).
TABLE2 = {
    "classification": ["sup_swinv2_b_in21k", "clip_vitb_laion2b", "sup_convnext_b_in21k"],
    "detection": ["sup_convnext_b_in21k", "sup_swinv2_b_in21k", "sup_convnext_b_in1k"],
    "segmentation": ["sup_convnext_b_in21k", "sup_swinv2_b_in21k", "sup_convnext_b_in1k"],
    "retrieval": ["sup_convnext_b_in21k", "sup_swinv2_b_in21k", "clip_vitb_laion2b"],
    "ood_classification": ["sup_convnext_b_in21k", "sup_swinv2_b_in21k", "clip_vitb_laion2b"],
    "ood_detection": ["sup_convnext_b_in1k", "sup_convnext_t_in1k", "sup_convnext_b_in21k"],
    "overall": ["sup_convnext_b_in21k", "sup_swinv2_b_in21k", "clip_vitb_laion2b"],
}

#: Table 20: mean z of the top-3 backbones of each pretraining group, per task.
TABLE20 = {
    "classification": {"ssl": 0.573, "sup-1k": 0.527, "sup-21k": 0.936},
    "detection": {"ssl": 0.298, "sup-1k": 0.743, "sup-21k": 1.076},
    "segmentation": {"ssl": 0.314, "sup-1k": 0.717, "sup-21k": 1.071},
    "retrieval": {"ssl": 0.489, "sup-1k": -0.079, "sup-21k": 0.708},
    "ood_classification": {"ssl": 0.419, "sup-1k": 0.287, "sup-21k": 1.271},
    "ood_detection": {"ssl": 0.414, "sup-1k": 0.923, "sup-21k": 0.853},
}


def load_records() -> Any:
    """All transcribed records (pandas DataFrame; params kept as strings)."""
    import pandas as pd

    return pd.read_csv(RESULTS_CSV, dtype={"params": str}, keep_default_na=False,
                       na_values={"value": [""]})  # fmt: skip


def load_meta() -> Any:
    """Backbone metadata (see README.md: param counts are NOT from the paper)."""
    import pandas as pd

    return pd.read_csv(META_CSV)


def main_comparison(records: Any, meta: Any) -> Any:
    """Records of the paper's main comparison: the six Table-2 tasks, the pretrained backbones
    of Table 1 at the sizes of appendix B.1 (``meta.main``); no random-init baselines and none
    of the retrieval-only larger variants (ConvNeXt-S/XL, ViT-L, SwinV2-L, SwinV2-B-w16, CLIP
    RN50x64)."""
    main = set(meta.loc[meta["main"], "backbone"])
    return records[records["backbone"].isin(main) & records["task"].isin(TABLE2_TASKS)]


if __name__ == "__main__":
    main(Path(sys.argv[1]))
