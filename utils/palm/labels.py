"""Labels of iChallenge-PM: from a training file's name, and from the validation label file.

No OpenCV and no Paddle here (``openpyxl`` is imported only to read an ``.xlsx``).
"""

import csv
import pathlib
import re

TRAIN_NAME = re.compile(r"^([HNP])\d+\.[A-Za-z]+$", re.IGNORECASE)
#: Label of each training file's first letter: H (high myopia) and N (normal) are 0, P (pathologic myopia) 1.
LABEL_OF_LETTER = {"H": 0, "N": 0, "P": 1}


def label_from_filename(name):
    """Label of a training image from its file name: H (high myopia) and N (normal) are 0, P is 1.

    Only the base name counts (``"a/b/P0007.jpg"`` is 1). Anything but a letter H, N or P followed by
    digits and an extension raises ``ValueError`` naming the file.
    """
    base = pathlib.PurePath(str(name)).name
    match = TRAIN_NAME.match(base)
    if match is None:
        raise ValueError(
            f"unexpected file name {base!r}: training images are named H0001.jpg, N0001.jpg or P0001.jpg "
            "(H: high myopia and N: normal are label 0, P: pathologic myopia is label 1)"
        )
    return LABEL_OF_LETTER[match.group(1).upper()]


def read_label_table(path):
    """Rows of a validation label file (``.xlsx`` or ``.csv``) as dicts with the official columns.

    Needs the columns ``imgName`` and ``Label``; ``ID``, ``Fovea_X`` and ``Fovea_Y`` are kept when present.
    Empty rows are skipped.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        import openpyxl

        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as error:  # openpyxl raises several types for a broken file
            raise ValueError(f"cannot read {path} as an .xlsx workbook: {error}") from error
        rows = list(book.worksheets[0].iter_rows(values_only=True))
        book.close()
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's byte-order mark
            rows = list(csv.reader(f))
    else:
        raise ValueError(f"label file {path}: expected .xlsx or .csv, not {suffix or 'no extension'!r}")
    if not rows:
        raise ValueError(f"label file {path} is empty")
    header = [str(cell).strip() if cell is not None else "" for cell in rows[0]]
    missing = [column for column in ("imgName", "Label") if column not in header]
    if missing:
        raise ValueError(f"label file {path} lacks the column(s) {missing}; its header is {header}")
    table = []
    for line, row in enumerate(rows[1:], start=2):
        if all(cell is None or str(cell).strip() == "" for cell in row):
            continue
        table.append({column: row[i] if i < len(row) else None for i, column in enumerate(header) if column})
        table[-1]["_line"] = line
    return table


def read_labels(path):
    """``{image_name: label}`` from the official ``.xlsx`` (read with openpyxl) or a ``.csv`` copy.

    Labels must be 0 or 1 (``1``, ``1.0`` and ``"1"`` are accepted); a bad label or a name listed
    twice raises ``ValueError`` naming the file and the line.
    """
    labels = {}
    for row in read_label_table(path):
        name = str(row["imgName"]).strip()
        try:
            label = float(str(row["Label"]).strip())
        except ValueError:
            label = None
        if label not in (0.0, 1.0):
            raise ValueError(f"label file {path}, line {row['_line']}: label {row['Label']!r} of "
                             f"{name!r} is not 0 or 1")
        if name in labels:
            raise ValueError(f"label file {path}, line {row['_line']}: {name!r} is listed twice")
        labels[name] = int(label)
    return labels


def class_counts(labels):
    """``{0: count, 1: count}`` of a sequence of 0/1 labels."""
    labels = [int(label) for label in labels]
    return {label: labels.count(label) for label in (0, 1)}
