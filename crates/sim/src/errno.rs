//! errno names for the simulator's profiles and control channel.

pub fn from_name(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..4096).contains(&n).then_some(n);
    }
    Some(match name {
        "EPERM" => libc::EPERM,
        "ENOENT" => libc::ENOENT,
        "EIO" => libc::EIO,
        "ENXIO" => libc::ENXIO,
        "EAGAIN" => libc::EAGAIN,
        "ENOMEM" => libc::ENOMEM,
        "EACCES" => libc::EACCES,
        "EBUSY" => libc::EBUSY,
        "EEXIST" => libc::EEXIST,
        "ENODEV" => libc::ENODEV,
        "EINVAL" => libc::EINVAL,
        "ENOSPC" => libc::ENOSPC,
        "EUSERS" => libc::EUSERS,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        "EOPNOTSUPP" => libc::EOPNOTSUPP,
        "EFAULT" => libc::EFAULT,
        "E2BIG" => libc::E2BIG,
        _ => return None,
    })
}
