"""The Ultralytics side of ``benchmarks/compare_ultralytics.py``, run only by the Python of the
Ultralytics virtual environment: it imports ultralytics and torch, which the project never
depends on, so nothing in the project (package, scripts, tests) may import it.
compare_ultralytics.py copies it into its work folder and runs the copy there:

    <venv>/bin/python ultralytics_job.py train JOB.json
    <venv>/bin/python ultralytics_job.py predict JOB.json

JOB.json (written by compare_ultralytics.py) holds every setting and names the files each step
writes. It uses only the standard library besides ultralytics, since the venv has none of the
project's code.

Offline: the caller sets YOLO_OFFLINE=1 (Ultralytics skips its online check, so no update check,
no telemetry, no package auto-install) and YOLO_CONFIG_DIR to the work folder. What remains is
the font check of every dataset check (``check_font("Arial.ttf")`` asks the asset server even
with plots off): a stand-in font file under that name in the config folder answers it (see
`provide_fonts`). The model is built from the architecture file shipped in the package
(``yolov8n.yaml``, pretrained=False) and amp=False skips the AMP check (which loads a
downloaded model on CUDA). Anything still reaching for the network is stopped and reported on
a line starting with `BLOCKED` (see `guard_network`).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

# compare_ultralytics.py counts the log lines starting with this (the same string is there).
BLOCKED = "ultralytics_job: blocked network access:"
LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1", b"::1"}
FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def _blocked(what: str) -> OSError:
    print(f"{BLOCKED} {what}", file=sys.stderr, flush=True)
    return OSError(f"network access disabled by the benchmark: {what}")


def guard_network() -> None:
    """Make every name lookup and internet connection fail at once, each with a `BLOCKED`
    line, so that the run is provably offline (local sockets, e.g. of data-loader workers,
    still work)."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOCAL_HOSTS:
            raise _blocked(f"name lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            raise _blocked(f"connection to {address!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex


def provide_fonts() -> None:
    """Put matplotlib's DejaVu Sans into Ultralytics' config folder under the names its font
    check looks for there first, so the check never downloads Arial (the fonts only label
    plots, and plots are off)."""
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONTS:
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def train(job: dict[str, Any]) -> None:
    """Train YOLOv8n from scratch within ``time`` hours; write the weights path and
    Ultralytics' own final validation (of those weights) to ``train_result``."""
    from ultralytics import YOLO

    settings = job["train"]
    model = YOLO(settings["model"])  # an architecture file: random weights, nothing loaded
    metrics = model.train(
        data=settings["data"],
        epochs=settings["epochs"],
        time=settings["hours"],
        imgsz=settings["imgsz"],
        batch=settings["batch"],
        device=settings["device"],
        workers=settings["workers"],
        pretrained=False,
        amp=False,
        plots=False,
        seed=settings["seed"],
        project=settings["project"],
        name=settings["name"],
        exist_ok=True,
        val=True,
    )
    trainer = model.trainer
    weights = trainer.best if Path(trainer.best).exists() else trainer.last
    box = getattr(metrics, "box", None)
    result = {
        "save_dir": str(trainer.save_dir),
        "weights": str(weights),
        "final_map50": float(box.map50) if box is not None else None,
        "final_map50_95": float(box.map) if box is not None else None,
    }
    Path(job["train_result"]).write_text(json.dumps(result, indent=1), encoding="utf-8")


def predict(job: dict[str, Any]) -> None:
    """Detect on every listed image with the trained weights; write ``detections``: per image
    its id, boxes (xyxy in the image's own pixels), class ids and scores."""
    from ultralytics import YOLO

    settings = job["predict"]
    weights = json.loads(Path(job["train_result"]).read_text(encoding="utf-8"))["weights"]
    model = YOLO(weights)
    images = json.loads(Path(settings["images"]).read_text(encoding="utf-8"))
    found = []
    for image in images:
        (result,) = model.predict(
            image["path"],
            conf=settings["conf"],
            iou=settings["iou"],
            max_det=settings["max_det"],
            imgsz=settings["imgsz"],
            device=settings["device"],
            save=False,
            verbose=False,
        )
        boxes = result.boxes.cpu()
        found.append(
            {
                "image_id": image["image_id"],
                "boxes": boxes.xyxy.tolist(),
                "classes": [int(c) for c in boxes.cls.tolist()],
                "scores": boxes.conf.tolist(),
            }
        )
    Path(job["detections"]).write_text(json.dumps({"images": found}), encoding="utf-8")
    print(f"predicted {len(found)} images with {weights}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("train", "predict"):
        print("usage: ultralytics_job.py train|predict JOB.json", file=sys.stderr)
        return 2
    guard_network()
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    provide_fonts()
    (train if argv[0] == "train" else predict)(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
