"""How each reference model is made: set sizes, epochs, losses, seeds and the commands to
reproduce it. train.py trains by it; calibrate.py writes it into each manifest (signed),
and cards.py shows it on the model card."""

from __future__ import annotations

SEED = 20260  # train.py --seed

# the seeds are offsets from SEED: the training set, the card's test set, the calibration
# set (held out: not trained on, not the card's test) and the set the ECE is measured on
RECIPE = {
    "gate": {"train_size": 4900, "misoriented": 700,
             "train_size_rule": "700 per class x 6 classes (of the lung views, 15 % white lung: confluent lines) "
                                "+ 700 lung and FAST views turned on the screen, labelled other",
             "epochs": 8,
             "loss": "cross-entropy, label smoothing 0.05",
             "seed_offsets": {"train": 0, "test": 501, "calibration": 600, "ece": 700}, "calibration_per_class": 250,
             "test_size": 1500},
    "lung": {"train_size": 13500, "epochs": 20, "mimic_share": 0.45, "confluent_share": 0.2,
             "train_size_rule": "45 % one B-line mimic and no B-line (E-lines, needles and emphysema twice as "
                                "often as the other five types), 20 % a confluent band, the rest 0-8 separate "
                                "lines (4-8 twice as often as 0-3); a line's column targets on its centre only",
             "loss": "column BCE (positive weight 4) + 0.5 x pleural-row cross-entropy",
             "seed_offsets": {"train": 1, "test": 502, "calibration": 601, "ece": 701,
                              "line_check": 801, "line_check_threshold": 802,
                              "line_check_more": 803},
             "test_size": 1800, "calibration_size": 600},
    "fast": {"train_size": 2400, "epochs": 10, "loss": "pixel BCE (positive weight 3) + soft Dice",
             "seed_offsets": {"train": 2, "test": 503, "calibration": 602, "ece": 702},
             "test_size": 400, "calibration_size": 400},
}

# the exact commands, in order. train.py trains gate, lung, FAST in this order from one
# seeded random state, so a model is reproduced by training the ones before it too
ONLY = {"gate": " --only gate", "lung": " --only gate --only lung", "fast": ""}


def commands(task: str, seed: int = SEED) -> list[str]:
    return (["pip install -e '.[train]'",
             f"python models/train/train.py --seed {seed}{ONLY[task]} --key SIGNING_KEY.pem"]
            + (["python models/train/linecheck.py"] if task == "lung" else [])
            + ["python models/train/calibrate.py --key SIGNING_KEY.pem",
               "python models/train/cards.py"])


# wall time of each step on 2 busy shared CPU cores, minutes (train.py: gate, lung, FAST)
WALL_MINUTES = {"gate": 4, "lung": 15, "fast": 21, "calibrate": 3, "line_check": 3}


def seed(task: str, what: str) -> int:
    return SEED + RECIPE[task]["seed_offsets"][what]


def training_facts(task: str, seed: int = SEED) -> dict:
    r = RECIPE[task]
    return {"train_size": r["train_size"], "train_size_rule": r.get("train_size_rule", ""),
            "epochs": r["epochs"], "loss": r["loss"],
            **{k: r[k] for k in ("mimic_share", "confluent_share", "misoriented") if k in r},
            "seeds": {k: seed + v for k, v in r["seed_offsets"].items()},
            "test_size": r["test_size"], "commands": commands(task, seed),
            "wall_minutes": {"train": WALL_MINUTES[task], "calibrate": WALL_MINUTES["calibrate"],
                             **({"line_check": WALL_MINUTES["line_check"]} if task == "lung" else {})}}
