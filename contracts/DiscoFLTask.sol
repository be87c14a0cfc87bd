// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title One DiscoFL task: rounds, anonymous model commitments, scores, Top-K rewards.
/// @notice Model identifiers are the 32-byte sha2-256 digests of the model blobs
///         (the multihash digest of a CIDv1 with the raw codec); see docs/contract.md.
/// @dev Anonymity scheme (commit, shuffle, reveal):
///      1. a worker commits c = keccak256(abi.encode(this, round, worker, digest, salt));
///         the contract folds (worker, c) into the round's accumulator
///         acc = keccak256(abi.encode(acc, worker, c)); the (digest, salt) pair goes to
///         the requester off-chain;
///      2. the requester publishes the round's digests in a shuffled order
///         (openEvaluation); evaluators score by position in that list;
///      3. at settlement the requester opens every commitment, in submission order
///         (submitter, position in the list, salt), and the contract recomputes the
///         accumulator before it credits anything. A submitter whose opening the
///         requester does not have is passed with its raw commitment and position
///         NOT_OPENED: it stays out of the list and earns nothing, and cannot block the
///         round. Verifying against one accumulator instead of W storage slots keeps
///         settlement cheap for many workers.
///      During evaluation the chain holds only hiding commitments and a shuffled list,
///      so nobody but the requester can tell from the chain who submitted which model.
/// @dev Scores are committed, then revealed (commit-reveal, as in BlockFlow): until every
///      worker committed its scores or the evaluation deadline passed, the chain holds
///      only s = keccak256(abi.encode(this, round, evaluator, salt, scores)), folded
///      into one accumulator (scoreAccumulator, like the model commitments: no fresh
///      storage slot per evaluator), so a late evaluator has nobody's scores to copy.
///      Reveals are taken from then until the reveal deadline (the evaluation deadline
///      plus revealPeriod): the evaluators hand their rows to the requester, which
///      posts them all in one revealScores call; an evaluator whose row it left out
///      posts its own the same way. The contract checks each row against its
///      commitment, so every ScoresRevealed event carries the scores that were
///      committed blind. A committed score row that is not revealed counts as no
///      evaluation at all (the evaluator scored nobody: honesty 0).
/// @dev Liveness: if the requester lets a deadline pass by more than the grace period
///      without opening evaluation or settling, anyone may end the task
///      (endAbandonedTask): the rest of the deposit is shared equally by the workers
///      that committed at least one model, as pull credits (no round scored the work
///      that money was for, so there is nothing to weigh it by). A finished task that
///      the requester does not close may be closed by anyone after the grace period.
///      Credits are withdrawn once the task has ended (closed or abandoned).
/// @dev Withholding: the requester may leave a model out of the published list (an
///      opening it never got, a copy, a model that fails its checks), but it gains
///      nothing by it: what no round paid never returns to the requester; at close it
///      is shared in proportion to what the rounds paid each worker (equally by the
///      workers that committed a model if no round paid anybody), so a worker the
///      rounds judged worthless gets none of it either. Only the rounding remainder,
///      or everything if nobody took part, is refunded. An excluded worker
///      may post its opening (disputeExclusion) until the evaluation deadline, which
///      makes the exclusion of a valid opening provable: the audit checks it against
///      the worker's ModelCommitted commitment and the settlement calldata.
/// @dev Registration is open to anyone by default; a task deployed allowlistOnly takes
///      only addresses the requester allowed (at deployment or with allowWorkers).
contract DiscoFLTask {
    // ------------------------------------------------------------------ types

    enum Phase {
        Registration,
        Submission,
        Evaluation,
        Finished,
        Closed,
        Abandoned // the requester stalled; ended by endAbandonedTask
    }

    enum RewardRule {
        TopK, // the paper's Top-K schedule, computed here
        Explicit // the requester posts per-rank amounts (sum <= pot); e.g. proportional
    }

    /// @dev Packed into one storage slot so that every per-worker check and credit of a
    ///      round touches a single slot.
    struct Worker {
        bool registered;
        uint16 index; // registration order, 0-based
        uint32 submittedRound;
        uint32 scoredRound; // the last round it committed scores in
        uint96 credit; // withdrawable wei
        bool shareClaimed; // its share of an abandoned task was added to a withdrawal
    }

    // ------------------------------------------------------------------ errors

    error InvalidRounds();
    error InvalidTopK();
    error InvalidMaxWorkers();
    error InvalidPeriod();
    error InvalidGracePeriod();
    error ZeroDeposit();
    error DepositTooLarge();
    error NotRequester();
    error WrongPhase(Phase expected, Phase actual);
    error WrongRound(uint32 expected, uint32 given);
    error NotRegistered();
    error AlreadyRegistered();
    error RegistrationFull();
    error RequesterCannotRegister();
    error NotAllowed();
    error AllowlistDisabled();
    error GracePeriodNotOver(uint256 until);
    error NoWorkers();
    error AlreadySubmitted();
    error AlreadyScored();
    error NothingRevealed();
    error BadPendingLength(uint256 given);
    error CommitsStillOpen(uint64 deadline);
    error BadScoreReveal();
    error NotSubmitted();
    error DeadlinePassed(uint64 deadline);
    error DeadlineNotReached(uint64 deadline);
    error ModelCountMismatch(uint256 expected, uint256 given);
    error OpeningsLength(uint256 expected, uint256 given);
    error BadScoresLength(uint256 expected, uint256 given);
    error ModelListMismatch();
    error BadReveal(uint256 position);
    error BadRanking(uint256 position);
    error RankingTooLong(uint256 maxLength, uint256 given);
    error AmountsMismatch();
    error AmountsExceedPot(uint256 pot, uint256 total);
    error NothingToWithdraw();
    error BadEarners(uint256 position);
    error TransferFailed();

    // ------------------------------------------------------------------ events

    event TaskCreated(
        address indexed requester,
        uint32 rounds,
        uint32 topK,
        uint32 maxWorkers,
        uint256 deposit,
        bytes32 initialModel,
        RewardRule rule,
        uint64 gracePeriod,
        bool allowlistOnly
    );
    event WorkerAllowed(address indexed worker);
    event WorkerRegistered(address indexed worker, uint16 index);
    event TrainingStarted(uint32 workers);
    event RoundStarted(uint32 indexed round, uint64 deadline);
    event ModelCommitted(uint32 indexed round, address indexed worker, bytes32 commitment);
    event EvaluationOpened(uint32 indexed round, bytes32[] models, uint64 deadline);
    event ScoresCommitted(uint32 indexed round, address indexed evaluator, bytes32 commitment);
    /// @dev `scores` match the evaluator's ScoresCommitted commitment (checked here).
    event ScoresRevealed(uint32 indexed round, address indexed evaluator, bytes scores);
    /// @dev rankedOwners[i] owns the model at position ranking[i] and earned rewards[i].
    ///      The full mapping (every submitter's position, NOT_OPENED = excluded) is in
    ///      the settleRound calldata, which anyone can read back and re-verify.
    event RoundSettled(
        uint32 indexed round,
        address[] rankedOwners,
        uint16[] ranking,
        uint256[] rewards
    );
    /// @dev `worker` posted the opening of its round commitment: its model is `digest`.
    event ExclusionDisputed(uint32 indexed round, address indexed worker, bytes32 digest, bytes32 salt);
    event TrainingFinished(uint32 rounds);
    event Withdrawn(address indexed worker, uint256 amount);
    /// @dev At close, `worker`'s share of what the rounds left unpaid, in proportion to
    ///      what the rounds paid it, was added to its credit.
    event CloseShareCredited(address indexed worker, uint256 amount);
    /// @dev `refund` went back to the requester. If no round paid anybody, each of the
    ///      `participants` may withdraw `share` (what the rounds left unpaid, in equal
    ///      parts); otherwise `participants` and `share` are 0 and the shares are in
    ///      the CloseShareCredited events before this one.
    event TaskClosed(uint256 refund, uint32 participants, uint256 share);
    /// @dev Anyone ended the task after the requester stalled in `phase` of `round`:
    ///      each of the `participants` (workers that committed a model) may withdraw
    ///      `share` on top of its credit; the rounding remainder is credited to the
    ///      requester (all of it when nobody took part).
    event TaskAbandoned(Phase phase, uint32 round, uint32 participants, uint256 share, uint256 requesterCredit);

    // ------------------------------------------------------------------ state

    uint256 public constant SCORE_SCALE = 10000; // scores are basis points; 0xFFFF = abstain
    uint256 public constant MAX_TOP_K = 64;
    /// @dev What one settleRound transaction carries: 86 calldata bytes per submitter
    ///      (its model's digest and its 54-byte opening), so at 768 (and MAX_TOP_K) about
    ///      71 kB, within 80 % of the 128 KiB that geth's and reth's pools accept, and
    ///      about 2.5M gas, under a sixth of EIP-7825's 16,777,216 cap. See docs/contract.md.
    uint256 public constant MAX_WORKERS = 768;
    uint16 public constant NOT_OPENED = 0xFFFF;
    /// @dev One submitter's record in settleRound's `openings`: address, position, salt.
    uint256 public constant OPENING_BYTES = 54;
    /// @dev About 136 years: block time + period always fits the uint64 deadline, so
    ///      no round can fail to open or start on an overflow (which would lock the deposit).
    uint64 public constant MAX_PERIOD = type(uint32).max;
    /// @dev The shortest grace period: a slow requester (BlockFlow over many workers, a
    ///      congested chain) must not lose its task to the first impatient caller.
    uint64 public constant MIN_GRACE_PERIOD = 1 hours;

    address public immutable requester;
    uint32 public immutable rounds;
    uint32 public immutable topK;
    uint32 public immutable maxWorkers;
    uint64 public immutable submissionPeriod;
    uint64 public immutable evaluationPeriod;
    /// @dev How long reveals of a round's scores are taken after its evaluation deadline.
    uint64 public immutable revealPeriod;
    uint256 public immutable deposit;
    bytes32 public immutable initialModel;
    RewardRule public immutable rule;
    uint64 public immutable gracePeriod;
    bool public immutable allowlistOnly;

    Phase public phase;
    uint32 public currentRound;
    uint64 public deadline;
    uint32 public workerCount;
    uint32 public submittedCount;
    uint32 public scoredCount;
    uint32 public modelCount;
    uint16 public participantCount; // workers that committed a model; packed with the above
    uint64 public revealDeadline; // the last second reveals of the round's scores are taken
    uint32 public revealedCount; // score commitments revealed this round
    /// @dev Every wei credited so far (<= deposit < 2^96). Packed with the two fields
    ///      above, whose slot the first openEvaluation already wrote: the first
    ///      settlement then updates a nonzero slot (5k gas) instead of a zero one (22k).
    uint96 public totalCredited;
    bytes32 public modelListHash;
    bytes32 public commitmentAccumulator;

    uint256 public totalWithdrawn;
    uint256 public refunded;
    uint256 public participantShare; // each participant's share of the rest, once abandoned or closed

    mapping(address => bool) public allowed;

    mapping(address => Worker) public workers;
    /// @dev The round's score commitments not revealed yet, folded like the model
    ///      commitments: acc = keccak256(abi.encode(acc, evaluator, s)) from
    ///      bytes32(round), in commit order. One slot for every evaluator (no fresh
    ///      22k slot per worker); revealScores checks a list against it and folds
    ///      what stays unrevealed back in.
    bytes32 public scoreAccumulator;
    /// @dev One record of revealScores' `pending`: address (20), revealed flag (1),
    ///      salt or raw commitment (32).
    uint256 public constant PENDING_BYTES = 53;
    // No list of workers in storage: the WorkerRegistered events name them all, and a
    // list would cost every registration a fresh slot (about 27k gas).

    // ------------------------------------------------------------------ setup

    constructor(
        uint32 rounds_,
        uint32 topK_,
        uint32 maxWorkers_,
        uint64 submissionPeriod_,
        uint64 evaluationPeriod_,
        uint64 revealPeriod_,
        bytes32 initialModel_,
        RewardRule rule_,
        uint64 gracePeriod_,
        bool allowlistOnly_,
        address[] memory allowed_
    ) payable {
        if (rounds_ == 0) revert InvalidRounds();
        if (maxWorkers_ == 0 || maxWorkers_ > MAX_WORKERS) revert InvalidMaxWorkers();
        if (topK_ == 0 || topK_ > MAX_TOP_K || topK_ > maxWorkers_) revert InvalidTopK();
        if (submissionPeriod_ == 0 || evaluationPeriod_ == 0 || revealPeriod_ == 0) revert InvalidPeriod();
        if (submissionPeriod_ > MAX_PERIOD || evaluationPeriod_ > MAX_PERIOD || revealPeriod_ > MAX_PERIOD) {
            revert InvalidPeriod();
        }
        if (gracePeriod_ < MIN_GRACE_PERIOD || gracePeriod_ > MAX_PERIOD) revert InvalidGracePeriod();
        if (allowed_.length != 0 && !allowlistOnly_) revert AllowlistDisabled();
        if (msg.value == 0) revert ZeroDeposit();
        if (msg.value > type(uint96).max) revert DepositTooLarge();
        requester = msg.sender;
        rounds = rounds_;
        topK = topK_;
        maxWorkers = maxWorkers_;
        submissionPeriod = submissionPeriod_;
        evaluationPeriod = evaluationPeriod_;
        revealPeriod = revealPeriod_;
        deposit = msg.value;
        initialModel = initialModel_;
        rule = rule_;
        gracePeriod = gracePeriod_;
        allowlistOnly = allowlistOnly_;
        scoreAccumulator = bytes32(uint256(1)); // nonzero from the start: openEvaluation writes 5k, not 22k
        for (uint256 i = 0; i < allowed_.length; i++) _allow(allowed_[i]);
        emit TaskCreated(
            msg.sender,
            rounds_,
            topK_,
            maxWorkers_,
            msg.value,
            initialModel_,
            rule_,
            gracePeriod_,
            allowlistOnly_
        );
    }

    modifier onlyRequester() {
        if (msg.sender != requester) revert NotRequester();
        _;
    }

    function _inPhase(Phase expected) private view {
        if (phase != expected) revert WrongPhase(expected, phase);
    }

    function _atRound(uint32 round) private view {
        if (round != currentRound) revert WrongRound(currentRound, round);
    }

    /// @notice Lets these addresses register (a task deployed allowlistOnly), before
    ///         training starts.
    function allowWorkers(address[] calldata who) external onlyRequester {
        if (!allowlistOnly) revert AllowlistDisabled();
        _inPhase(Phase.Registration);
        for (uint256 i = 0; i < who.length; i++) _allow(who[i]);
    }

    function _allow(address who) private {
        allowed[who] = true;
        emit WorkerAllowed(who);
    }

    function register() external {
        _inPhase(Phase.Registration);
        if (msg.sender == requester) revert RequesterCannotRegister();
        if (allowlistOnly && !allowed[msg.sender]) revert NotAllowed();
        Worker storage w = workers[msg.sender];
        if (w.registered) revert AlreadyRegistered();
        uint32 n = workerCount;
        if (n >= maxWorkers) revert RegistrationFull();
        w.registered = true;
        w.index = uint16(n);
        workerCount = n + 1;
        emit WorkerRegistered(msg.sender, uint16(n));
    }

    function startTraining() external onlyRequester {
        _inPhase(Phase.Registration);
        if (workerCount == 0) revert NoWorkers();
        emit TrainingStarted(workerCount);
        _startRound(1);
    }

    // ------------------------------------------------------------------ rounds

    function submitModel(uint32 round, bytes32 commitment) external {
        _inPhase(Phase.Submission);
        _atRound(round);
        if (block.timestamp > deadline) revert DeadlinePassed(deadline);
        Worker storage w = workers[msg.sender];
        if (!w.registered) revert NotRegistered();
        uint32 last = w.submittedRound;
        if (last == round) revert AlreadySubmitted();
        w.submittedRound = round;
        commitmentAccumulator = _fold(commitmentAccumulator, msg.sender, commitment);
        submittedCount += 1;
        if (last == 0) participantCount += 1; // its first model: it takes part
        emit ModelCommitted(round, msg.sender, commitment);
    }

    /// @notice Publishes the round's model digests, shuffled, and opens evaluation.
    ///         Allowed once every worker submitted, or once the submission deadline passed.
    function openEvaluation(uint32 round, bytes32[] calldata models) external onlyRequester {
        _inPhase(Phase.Submission);
        _atRound(round);
        if (submittedCount < workerCount && block.timestamp <= deadline) {
            revert DeadlineNotReached(deadline);
        }
        // Fewer models than submissions: the requester lacks some openings (those
        // submitters are passed as NOT_OPENED at settlement).
        if (models.length > submittedCount) revert ModelCountMismatch(submittedCount, models.length);
        modelCount = uint32(models.length);
        modelListHash = keccak256(abi.encodePacked(models));
        scoreAccumulator = bytes32(uint256(round));
        phase = Phase.Evaluation;
        uint64 evalDeadline = uint64(block.timestamp) + evaluationPeriod;
        deadline = evalDeadline;
        revealDeadline = evalDeadline + revealPeriod; // both periods <= MAX_PERIOD: no overflow
        emit EvaluationOpened(round, models, evalDeadline);
    }

    /// @notice Commits the caller's scores of the round's published models, blind:
    ///         `commitment` = keccak256(abi.encode(this, round, evaluator, salt, scores))
    ///         (see revealScores for `scores`). Taken until the evaluation deadline.
    function commitScores(uint32 round, bytes32 commitment) external {
        _inPhase(Phase.Evaluation);
        _atRound(round);
        if (block.timestamp > deadline) revert DeadlinePassed(deadline);
        Worker storage w = workers[msg.sender];
        if (!w.registered) revert NotRegistered();
        if (w.scoredRound == round) revert AlreadyScored();
        w.scoredRound = round;
        scoreAccumulator = _fold(scoreAccumulator, msg.sender, commitment);
        scoredCount += 1;
        emit ScoresCommitted(round, msg.sender, commitment);
    }

    /// @notice Reveals committed score rows of this round, one or many: the requester
    ///         posts the rows its evaluators sent it in one call (a batch), and an
    ///         evaluator whose row the batch left out posts its own the same way.
    ///         Anyone may call (only an evaluator and whoever it told know a row's
    ///         salt). Taken once commits closed (every worker committed, or the
    ///         evaluation deadline passed) and until the reveal deadline. Emits one
    ///         ScoresRevealed per row revealed, checked against its commitment.
    /// @param pending every score commitment of the round not revealed yet, in commit
    ///        order (the ScoresCommitted events less the ScoresRevealed ones), one
    ///        PENDING_BYTES record each: the evaluator (20 bytes), 1 if this call
    ///        reveals its row, else 0 (1 byte), then its salt if revealed, else its
    ///        raw commitment (32 bytes). The list must fold to scoreAccumulator
    ///        (BadScoreReveal otherwise: a wrong salt or row, or a list that another
    ///        reveal made stale); what it leaves unrevealed becomes the new one, so a
    ///        row is revealed at most once.
    /// @param rows the revealed rows, concatenated in list order; each is one
    ///        big-endian uint16 per published model, in published order: basis points
    ///        in [0, 10000], or 0xFFFF to abstain (a model one could not fetch). Kept
    ///        in calldata and the event only: about 16 gas per score.
    function revealScores(uint32 round, bytes calldata pending, bytes calldata rows) external {
        _inPhase(Phase.Evaluation);
        _atRound(round);
        uint64 d = deadline;
        if (scoredCount < workerCount && block.timestamp <= d) revert CommitsStillOpen(d);
        if (block.timestamp > revealDeadline) revert DeadlinePassed(revealDeadline);
        if (pending.length % 53 != 0) revert BadPendingLength(pending.length); // PENDING_BYTES
        uint256 m = pending.length / 53;
        uint256 len = 2 * uint256(modelCount);
        bytes32 acc = bytes32(uint256(round));
        bytes32 rest = acc;
        uint256 revealed = 0;
        for (uint256 i = 0; i < m; ) {
            address who;
            uint256 flag;
            bytes32 c; // the salt, or the raw commitment
            assembly ("memory-safe") {
                let at := add(pending.offset, mul(i, 53))
                who := shr(96, calldataload(at))
                flag := shr(248, calldataload(add(at, 20)))
                c := calldataload(add(at, 21))
            }
            if (flag != 0) {
                if ((revealed + 1) * len > rows.length) revert BadScoresLength((revealed + 1) * len, rows.length);
                bytes calldata scores = rows[revealed * len:(revealed + 1) * len];
                c = keccak256(abi.encode(address(this), round, who, c, scores));
                emit ScoresRevealed(round, who, scores);
                unchecked {
                    ++revealed;
                }
            } else {
                rest = _fold(rest, who, c);
            }
            acc = _fold(acc, who, c);
            unchecked {
                ++i;
            }
        }
        if (revealed == 0) revert NothingRevealed();
        if (rows.length != revealed * len) revert BadScoresLength(revealed * len, rows.length);
        if (acc != scoreAccumulator) revert BadScoreReveal();
        scoreAccumulator = rest;
        revealedCount += uint32(revealed);
    }

    /// @notice A worker whose model is not in the published list posts its opening
    ///         (digest, salt) until the evaluation deadline, so that anyone can check
    ///         whether the requester withheld a valid one. Emits only: the check is
    ///         off-chain (`audit`), and settlement costs nothing more.
    function disputeExclusion(uint32 round, bytes32 digest, bytes32 salt) external {
        _inPhase(Phase.Evaluation);
        _atRound(round);
        if (block.timestamp > deadline) revert DeadlinePassed(deadline);
        if (workers[msg.sender].submittedRound != round) revert NotSubmitted();
        emit ExclusionDisputed(round, msg.sender, digest, salt);
    }

    /// @notice Reveals who submitted which model, verifies every commitment, and credits
    ///         the round's rewards. Allowed once commits closed (every worker committed
    ///         scores, or the evaluation deadline passed) and every committed score row
    ///         was revealed, or else once the reveal deadline passed.
    /// @param models     the list published by openEvaluation, in the same order
    /// @param openings   one OPENING_BYTES record per submitter of the round, in
    ///                   submission (event) order, packed: its address (20 bytes), where
    ///                   its model stands in `models` (2 bytes, big-endian; NOT_OPENED if
    ///                   excluded), and the salt of its commitment or, for NOT_OPENED,
    ///                   the raw commitment itself (32 bytes). Packed rather than three
    ///                   ABI arrays: a third fewer calldata bytes, which under EIP-7623's
    ///                   calldata floor is most of settlement's cost at large W.
    /// @param ranking    positions into `models`, best first; at most topK of them
    /// @param amounts    empty under TopK; under Explicit, the wei for each ranked position
    function settleRound(
        uint32 round,
        bytes32[] calldata models,
        bytes calldata openings,
        uint16[] calldata ranking,
        uint256[] calldata amounts
    ) external onlyRequester {
        _inPhase(Phase.Evaluation);
        _atRound(round);
        _checkSettleable();
        uint256 n = models.length;
        uint256 m = submittedCount;
        if (n != modelCount) revert ModelCountMismatch(modelCount, n);
        if (openings.length != m * OPENING_BYTES) revert OpeningsLength(m * OPENING_BYTES, openings.length);
        if (keccak256(abi.encodePacked(models)) != modelListHash) revert ModelListMismatch();
        if (ranking.length > topK) revert RankingTooLong(topK, ranking.length);

        address[] memory owners = new address[](n);
        bytes32 acc = bytes32(uint256(round));
        uint256 opened = 0;
        for (uint256 i = 0; i < m; ) {
            address who;
            uint256 p;
            bytes32 c; // the salt, or the raw commitment
            assembly ("memory-safe") {
                let at := add(openings.offset, mul(i, 54)) // OPENING_BYTES
                who := shr(96, calldataload(at))
                p := shr(240, calldataload(add(at, 20)))
                c := calldataload(add(at, 22))
            }
            if (p != NOT_OPENED) {
                if (p >= n || owners[p] != address(0)) revert BadReveal(i);
                owners[p] = who;
                c = _commitment(round, who, models[p], c);
                unchecked {
                    ++opened;
                }
            }
            acc = _fold(acc, who, c);
            unchecked {
                ++i;
            }
        }
        if (opened != n || acc != commitmentAccumulator) revert BadReveal(m);

        uint256[] memory rewards = _rankRewards(roundPot(round), ranking.length, amounts);
        uint256 credited = 0;
        address[] memory rankedOwners = new address[](ranking.length);
        for (uint256 i = 0; i < ranking.length; i++) {
            uint256 p = ranking[i];
            if (p >= n) revert BadRanking(i);
            address who = owners[p];
            if (who == address(0)) revert BadRanking(i); // already ranked
            owners[p] = address(0);
            uint256 r = rewards[i];
            if (r != 0) {
                Worker storage w = workers[who];
                w.credit += uint96(r);
                credited += r;
            }
            rankedOwners[i] = who;
        }
        totalCredited += uint96(credited);
        emit RoundSettled(round, rankedOwners, ranking, rewards);

        if (round == rounds) {
            phase = Phase.Finished;
            deadline = uint64(block.timestamp); // the grace period to close runs from here
            emit TrainingFinished(rounds);
        } else {
            _startRound(round + 1);
        }
    }

    /// @dev Reverts unless the round's scores are final: commits closed and every
    ///      committed row revealed, or the reveal deadline passed.
    function _checkSettleable() private view {
        if (block.timestamp > revealDeadline) return;
        if (scoredCount < workerCount && block.timestamp <= deadline) revert DeadlineNotReached(deadline);
        if (revealedCount < scoredCount) revert DeadlineNotReached(revealDeadline);
    }

    // ------------------------------------------------------------------ money

    /// @notice Pays the caller its credit and, where the rest was shared equally (an
    ///         abandoned task, or a close after rounds that paid nobody), its share (if
    ///         it committed a model; once). Only once the task has ended (closed or
    ///         abandoned): until then a credit is what the rounds awarded, which the
    ///         close shares the unpaid rest by. Nothing is stuck: anyone may close a
    ///         finished task, or end a stalled one, after the grace period.
    function withdraw() external {
        Phase p = phase;
        if (p != Phase.Closed && p != Phase.Abandoned) revert WrongPhase(Phase.Closed, p);
        Worker storage w = workers[msg.sender];
        uint256 amount = w.credit;
        if (w.submittedRound != 0 && !w.shareClaimed && participantShare != 0) {
            w.shareClaimed = true;
            amount += participantShare;
        }
        if (amount == 0) revert NothingToWithdraw();
        w.credit = 0;
        totalWithdrawn += amount;
        emit Withdrawn(msg.sender, amount);
        (bool ok, ) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    /// @notice Ends the task: before training starts (a cancellation: the whole deposit
    ///         goes back to the requester) or after the last round. Then what the rounds
    ///         left unpaid (the rest: explicit amounts below the pot, a policy's quality
    ///         floor, an empty ranking) is shared by what the rounds paid: each worker
    ///         the rounds credited gets floor(rest * credit / totalCredited), so a
    ///         worker that no round paid gets nothing from it either. If no round paid
    ///         anybody, the rest is shared equally by the participants (the workers that
    ///         committed a model). The requester decides what is left unpaid, so it
    ///         must not get it back: it is refunded only the rounding remainder (fewer
    ///         wei than the workers sharing), or everything if nobody took part. Only
    ///         the requester may cancel; anyone may close a finished task once its
    ///         grace period is over.
    /// @param earners every worker with a credit, in ascending address order (anyone
    ///        rebuilds it from the RoundSettled events; no withdrawal happens before the
    ///        end, so credits are the rounds' awards). The contract checks that the
    ///        credits of the listed workers add up to totalCredited, so none is left out.
    function closeTask(address[] calldata earners) external {
        Phase p = phase;
        if (p != Phase.Registration && p != Phase.Finished) revert WrongPhase(Phase.Finished, p);
        if (msg.sender != requester) {
            if (p == Phase.Registration) revert NotRequester();
            uint256 until = graceEnd();
            if (block.timestamp <= until) revert GracePeriodNotOver(until);
        }
        phase = Phase.Closed;
        uint256 earned = totalCredited;
        uint256 rest = deposit - earned;
        uint256 paid = 0;
        uint256 n = 0;
        uint256 share = 0;
        if (earned != 0) {
            uint256 sum = 0;
            address prev = address(0);
            for (uint256 i = 0; i < earners.length; i++) {
                address who = earners[i];
                if (who <= prev) revert BadEarners(i);
                prev = who;
                Worker storage w = workers[who];
                uint256 c = w.credit;
                sum += c;
                uint256 s = (rest * c) / earned; // rest, c < 2^96: no overflow
                if (s != 0) {
                    w.credit = uint96(c + s);
                    paid += s;
                    emit CloseShareCredited(who, s);
                }
            }
            if (sum != earned) revert BadEarners(earners.length);
        } else {
            if (earners.length != 0) revert BadEarners(0);
            n = p == Phase.Finished ? participantCount : 0;
            share = n == 0 ? 0 : rest / n;
            participantShare = share;
            paid = share * n;
        }
        totalCredited = uint96(earned + paid);
        uint256 refund = rest - paid;
        refunded = refund;
        emit TaskClosed(refund, uint32(n), share);
        if (refund != 0) {
            (bool ok, ) = requester.call{value: refund}("");
            if (!ok) revert TransferFailed();
        }
    }

    /// @notice Anyone ends a task whose requester stalled: it did not open evaluation
    ///         (or settle) within the grace period after the submission (or evaluation)
    ///         deadline. The rest of the deposit (deposit - totalCredited) is shared
    ///         equally by the participants, the registered workers that committed at
    ///         least one model in any round; each withdraws its share with withdraw().
    ///         The remainder of the division (fewer wei than participants), or the
    ///         whole rest if nobody took part, is credited to the requester. Credits
    ///         from settled rounds stay as they are.
    function endAbandonedTask() external {
        Phase p = phase;
        if (p != Phase.Submission && p != Phase.Evaluation) revert WrongPhase(Phase.Evaluation, p);
        uint256 until = graceEnd();
        if (block.timestamp <= until) revert GracePeriodNotOver(until);
        phase = Phase.Abandoned;
        uint256 rest = deposit - totalCredited;
        uint256 n = participantCount;
        uint256 share = n == 0 ? 0 : rest / n;
        uint256 toRequester = rest - share * n;
        participantShare = share;
        if (toRequester != 0) workers[requester].credit += uint96(toRequester);
        totalCredited = uint96(deposit);
        emit TaskAbandoned(p, currentRound, uint32(n), share, toRequester);
    }

    // ------------------------------------------------------------------ views

    /// @notice When the grace period of the current phase ends: the submission or
    ///         reveal deadline (or the time the last round settled) plus gracePeriod;
    ///         0 where none runs (registration, closed, abandoned).
    function graceEnd() public view returns (uint256) {
        Phase p = phase;
        if (p != Phase.Submission && p != Phase.Evaluation && p != Phase.Finished) return 0;
        return uint256(p == Phase.Evaluation ? revealDeadline : deadline) + gracePeriod;
    }

    /// @notice What withdraw() pays `who` once the task has ended (before that, what
    ///         the rounds credited it so far).
    function withdrawable(address who) external view returns (uint256) {
        Worker storage w = workers[who];
        uint256 amount = w.credit;
        if (w.submittedRound != 0 && !w.shareClaimed && participantShare != 0) amount += participantShare;
        return amount;
    }

    /// @notice The pot of a round: deposit / rounds; the last round also takes the
    ///         remainder, so that fully settled rounds pay out the whole deposit.
    function roundPot(uint32 round) public view returns (uint256) {
        uint256 base = deposit / rounds;
        return round == rounds ? deposit - base * (rounds - 1) : base;
    }

    /// @notice Shares of the paper's Top-K schedule for k ranked workers, wei-exact:
    ///         floor(pot * num_i / den), the rounding remainder to rank 1.
    ///         k = 1 and k = 2 pay everything to rank 1.
    function topKRewards(uint256 pot, uint256 k) public pure returns (uint256[] memory out) {
        out = new uint256[](k);
        if (k == 0) return out;
        if (k <= 2) {
            out[0] = pot;
            return out;
        }
        uint256 den = k << (k - 2);
        uint256 paid = 0;
        for (uint256 i = 1; i <= k; i++) {
            uint256 num;
            if (i + 3 <= k) num = k << (k - 2 - i);
            else if (i == k - 2) num = k + 1;
            else if (i == k - 1) num = k - 1;
            else num = 0;
            uint256 a = (pot * num) / den;
            out[i - 1] = a;
            paid += a;
        }
        out[0] += pot - paid;
    }

    function _rankRewards(
        uint256 pot,
        uint256 k,
        uint256[] calldata amounts
    ) private view returns (uint256[] memory) {
        if (rule == RewardRule.TopK) {
            if (amounts.length != 0) revert AmountsMismatch();
            return topKRewards(pot, k);
        }
        if (amounts.length != k) revert AmountsMismatch();
        uint256 total = 0;
        for (uint256 i = 0; i < k; i++) total += amounts[i];
        if (total > pot) revert AmountsExceedPot(pot, total);
        return amounts;
    }

    /// @dev keccak256(abi.encode(this, round, who, digest, salt)), hashed in scratch
    ///      memory: settlement runs it once per submitter, so no allocation per call.
    function _commitment(uint32 round, address who, bytes32 digest, bytes32 salt)
        private view returns (bytes32 c)
    {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, address())
            mstore(add(ptr, 0x20), round)
            mstore(add(ptr, 0x40), who)
            mstore(add(ptr, 0x60), digest)
            mstore(add(ptr, 0x80), salt)
            c := keccak256(ptr, 0xa0)
        }
    }

    /// @dev keccak256(abi.encode(acc, who, c)), likewise without allocation.
    function _fold(bytes32 acc, address who, bytes32 c) private pure returns (bytes32 out) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, acc)
            mstore(add(ptr, 0x20), who)
            mstore(add(ptr, 0x40), c)
            out := keccak256(ptr, 0x60)
        }
    }

    function _startRound(uint32 round) private {
        currentRound = round;
        phase = Phase.Submission;
        submittedCount = 0;
        scoredCount = 0;
        revealedCount = 0;
        modelCount = 0;
        commitmentAccumulator = bytes32(uint256(round)); // nonzero: no 20k first write
        uint64 d = uint64(block.timestamp) + submissionPeriod;
        deadline = d;
        emit RoundStarted(round, d);
    }

    function heldBalance() external view returns (uint256) {
        return address(this).balance;
    }

    // ------------------------------------------------------------------ trust anchor

    /// @dev The requester's own score of every published model of `round`, on a root
    ///      validation set that no worker holds (the `anchored` scoring rule's trust
    ///      anchor, after FLTrust); encoded as ScoresRevealed's `scores`.
    event AnchorScores(uint32 indexed round, bytes scores);

    /// @notice The last round whose anchor scores the requester posted (0: none).
    uint32 public anchoredRound;

    /// @notice The requester posts its anchor scores for the current round: once, while
    ///         the round is in evaluation (before it settles), one big-endian uint16 per
    ///         published model in published order (as revealScores). Emits only:
    ///         settlement does not read them; the audit recomputes the anchored rule
    ///         from the event. Values are checked off-chain, as evaluators' are.
    function postAnchorScores(uint32 round, bytes calldata scores) external onlyRequester {
        _inPhase(Phase.Evaluation);
        _atRound(round);
        if (anchoredRound == round) revert AlreadyScored();
        if (scores.length != 2 * uint256(modelCount)) {
            revert BadScoresLength(2 * uint256(modelCount), scores.length);
        }
        anchoredRound = round;
        emit AnchorScores(round, scores);
    }
}
