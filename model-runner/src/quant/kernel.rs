//! Which dot-product kernel this CPU runs, detected once at run time.

/// The dot-product kernel chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    /// AVX2 + FMA: integer dots with `maddubs` + `madd`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 + FMA + AVX-VNNI: integer dots with one `vpdpbusd` per block.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs, detected at run time. `CLOISTER_MATMUL_KERNEL`
    /// (`portable`, `avx2`) forces a slower one (to compare, or to rule a SIMD kernel out).
    pub fn detect() -> Kernel {
        let forced = std::env::var("CLOISTER_MATMUL_KERNEL").unwrap_or_default();
        if forced == "portable" {
            return Kernel::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                if forced != "avx2" && std::is_x86_feature_detected!("avxvnni") {
                    return Kernel::AvxVnni;
                }
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run, the portable one first (for tests and comparisons).
    pub fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                all.push(Kernel::Avx2);
                if std::is_x86_feature_detected!("avxvnni") {
                    all.push(Kernel::AvxVnni);
                }
            }
        }
        all
    }
}
