"""Re-encode a tarball of JPEG images at another JPEG quality: the input of issue 14's JPEG
ablation (docs/benchmarks.md), which reads how much validation accuracy the quality costs.

    python benchmarks/reencode_jpeg.py SOURCE.tar.gz OUT.tar.gz QUALITY

Every ``.jpg`` member is decoded and saved again with PIL at QUALITY (PIL's default 4:2:0
chroma subsampling, as the shared CIFAR-10 files have); other members are copied as they are.
"""

from __future__ import annotations

import argparse
import io
import tarfile

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("quality", type=int)
    args = parser.parse_args()
    with tarfile.open(args.source) as source, tarfile.open(args.out, "w:gz") as out:
        for member in source:
            if not member.isfile():
                out.addfile(member)
                continue
            data = source.extractfile(member).read()
            if member.name.endswith(".jpg"):
                encoded = io.BytesIO()
                Image.open(io.BytesIO(data)).convert("RGB").save(encoded, "JPEG",
                                                                  quality=args.quality)
                data = encoded.getvalue()
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))


if __name__ == "__main__":
    main()
