"""Class colours: classes.json gives each base class its colour (the family); its weather
variants keep the hue and change the lightness (Wint lighter, Night darker), so Truck,
Truck(Wint) and Truck(Night) read as one family yet stay apart in boxes and charts."""

import colorsys

from azaion_training.classes import WeatherMode, split_class_id

LIGHTNESS = {WeatherMode.Norm: 0.0, WeatherMode.Wint: 0.22, WeatherMode.Night: -0.22}
UNKNOWN = "#808080"


def variant_colour(family: str, cls: int) -> str:
    """`family` (#rrggbb, the base class's colour) shifted in lightness for cls's weather mode."""
    try:
        _, mode = split_class_id(cls)
    except ValueError:
        return family
    shift = LIGHTNESS.get(mode, 0.0)
    if not shift:
        return family
    digits = family.lstrip("#")
    red, green, blue = (int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4))
    hue, lightness, saturation = colorsys.rgb_to_hls(red, green, blue)
    # a colour already near the end it moves to goes the other way, so the variant never equals it
    lightness = lightness + shift if 0.08 <= lightness + shift <= 0.92 else lightness - shift
    lightness = min(0.92, max(0.08, lightness))
    return "#" + "".join(f"{round(v * 255):02x}" for v in colorsys.hls_to_rgb(hue, lightness, saturation))
