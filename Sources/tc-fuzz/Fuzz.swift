// libFuzzer target over FuzzChecks. scripts/fuzz builds it with -DFUZZING and
// -sanitize=fuzzer,address; a plain `swift build` (which builds every executable) gets a stub.
#if FUZZING
import FuzzChecks

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Called by libFuzzer with each input; traps when an invariant is violated.
@_cdecl("LLVMFuzzerTestOneInput")
public func tcFuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let body = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let problems = FuzzChecks.violations(body)
    if !problems.isEmpty { fatalError("invariant violated: " + problems.joined(separator: "; ")) }
    return 0
}

@_extern(c, "LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

// SwiftPM links every executable with its `main` renamed (`--defsym main=tc_fuzz_main`), which
// hides libFuzzer's own `main`; this one starts libFuzzer's driver instead.
@main enum TCFuzz {
    static func main() {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, tcFuzzOneInput))
    }
}
#else
@main enum TCFuzz {
    static func main() {
        print("tc-fuzz was built without -DFUZZING and -sanitize=fuzzer; run scripts/fuzz")
    }
}
#endif
