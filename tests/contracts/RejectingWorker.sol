// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice Test-only: a worker that is a contract. Its operator drives a task through
///         `forward` (register, submitModel, commitScores, revealScores, withdraw, ...), so the task
///         sees this contract as msg.sender. It refuses ETH until `setAccepting(true)`.
contract RejectingWorker {
    error Rejected();
    error NotOperator();

    address public immutable operator;
    bool public accepting;

    constructor() {
        operator = msg.sender;
    }

    /// @dev Calls `target` with `data`; a revert is passed on unchanged, so the caller
    ///      sees the target's own custom error.
    function forward(address target, bytes calldata data) external returns (bytes memory) {
        if (msg.sender != operator) revert NotOperator();
        (bool ok, bytes memory ret) = target.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        return ret;
    }

    function setAccepting(bool accepting_) external {
        if (msg.sender != operator) revert NotOperator();
        accepting = accepting_;
    }

    receive() external payable {
        if (!accepting) revert Rejected();
    }
}
