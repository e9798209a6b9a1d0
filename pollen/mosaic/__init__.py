"""What Mosaic's two halves share (``client_app/mosaic.py`` trains, ``strategies/mosaic.py``
distils): the generators and their discriminators (``generator.py``), and access to a
classifier's head and penultimate features (``heads.py``)."""

# The stage a Mosaic train message names (``pollen.records.MOSAIC_STAGE_KEY``); clients
# send prototypes in the first two and train their generator in the second.
WARMUP, GENERATOR, FEDAVG = "warmup", "generator", "fedavg"
