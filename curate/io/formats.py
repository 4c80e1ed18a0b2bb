"""The one list of image formats, shared by every command that reads or writes images.

``curate score``, ``reshard``, ``train``, ``make-evalset`` and ``evaluate`` all take an image
member (or file) to be one whose extension is here. The list is what the installed Pillow can
*decode*: every extension of ``PIL.Image.registered_extensions()`` whose format has an open
plugin, minus Pillow's stub plugins (BUFR, GRIB, HDF5, WMF/EMF: they identify a file but need an
external handler to decode it), MPEG (identified, never decoded) and EPS when Ghostscript is not
installed. With Pillow 11.2+ that includes AVIF; with 10.x it does not, and an ``.avif`` member is
then not an image member here (its sample gets ``missing_image`` naming the member).

``webdataset``'s generic names ``img`` and ``image`` are image members too.
"""

from __future__ import annotations

import functools

# Preferred first when a sample holds several image members (webdataset's usual names).
_PREFERRED = ("jpg", "jpeg", "png", "webp")
_GENERIC = ("img", "image")

# Formats that evaluation readers built on webdataset take as they are (clip_benchmark's
# ``build_wds_dataset`` tuples ``webp;png;jpg;jpeg``); ``make-evalset`` converts any other
# format to PNG (lossless) so that ``evaluate`` reads every sample it wrote.
EVAL_WDS_EXTS = ("webp", "png", "jpg", "jpeg")


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """Lower-case extensions (no dot) of every image format the installed Pillow decodes.

    Returns:
        A tuple: ``jpg``, ``jpeg``, ``png``, ``webp`` first (the order in which a sample's image
        member is chosen), then the rest sorted, then ``img`` and ``image``.
    """
    from PIL import EpsImagePlugin, Image, ImageFile

    Image.init()
    decodable = set()
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None:
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        if fmt == "MPEG" or (fmt == "EPS" and not EpsImagePlugin.has_ghostscript()):
            continue
        decodable.add(ext.lower().lstrip("."))
    rest = sorted(decodable - set(_PREFERRED))
    return tuple(e for e in _PREFERRED if e in decodable) + tuple(rest) + _GENERIC


def image_suffixes() -> frozenset[str]:
    """The same list as file suffixes with a dot (``{".jpg", ".png", ...}``), for folder trees;
    without webdataset's generic ``img`` / ``image``, which name no format of their own."""
    return frozenset("." + e for e in image_extensions() if e not in _GENERIC)
