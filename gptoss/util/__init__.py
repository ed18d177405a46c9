"""The bottom layer: helpers with no knowledge of models — atomic files and the cache folder
(`files`), device names (`devices`), argument checks (`checks`), and unwrapping a compiled or
distributed module (`modules`). Everything else may import from here; this imports nothing of gptoss."""
