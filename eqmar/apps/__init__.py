"""Task applications built on eqmar's shared components (like ``monai.apps``).

- :mod:`eqmar.apps.mar`: CT metal artifact reduction on SynDeepLesion-style data.
- :mod:`eqmar.apps.restoration`: natural-image restoration shared by deraining and inpainting (data,
  PSNR/SSIM incl. the Y-channel convention, the four-arm experiment runner).
- :mod:`eqmar.apps.derain`: single-image deraining with RCDNet (Rain100L, synthetic rain streaks).
- :mod:`eqmar.apps.inpaint`: inpainting of randomly missing pixels under Poisson noise.
- :mod:`eqmar.apps.classify`: rotated-digits classification (trained upright, tested rotated).
"""
