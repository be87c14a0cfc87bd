"""discofl-p2p: decentralised federated learning with a blockchain incentive layer.

Workers train in rounds, score each other's models anonymously and are paid by a
smart contract according to BlockFlow contribution scores (see docs/).
"""

__version__ = "0.1.0"
