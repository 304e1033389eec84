"""Synthetic HTI fields: the embedded default data set, with per-cell truth.

Each sample is a field of several cells in four channels (nucleus, microtubules, ER, protein), drawn
at ``PIXEL_SIZE_UM`` µm per pixel. The three reference channels always show the cells' nuclei
(textured ellipses with dark nucleoli), a microtubule network radiating from the centrosome beside
the nucleus, and a reticular ER densest around the nucleus. The protein channel shows the
compartments named by the sample's labels, each with its own morphology (``COMPARTMENT_DRAWERS``).

One module per concern: ``labels`` (which classes a field has), ``field`` (the cell layout),
``canvas`` (drawing primitives), ``references`` (the reference channels), ``compartments`` (the
protein's morphology per class), ``render`` (a whole field with its camera and per-cell truth),
``dataset`` (the files on disk). Import each name from the module that defines it.
"""
